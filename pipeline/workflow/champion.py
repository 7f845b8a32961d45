"""Champion/challenger: promote a new model only when it beats the current one on the same holdout."""

from __future__ import annotations

import math

from pipeline.tasks import holdout_metric_name


def decide(metric: str, challenger: float, champion: float | None, min_improvement: float,
           task: str | None = None) -> dict:
    """The promotion decision with both scores. ``metric`` is a holdout metric name (e.g. ``macro_f1``); ``loss``
    improves downwards. No champion yet: promote. A NaN challenger score never wins. ``task``: the task the
    metric scores, named in the decision when the models have several (label.tasks)."""
    from pipeline.train.metrics import metric_mode  # here, not at the top: it loads torch, which a run whose
    # steps are all done must not wait for
    base = {"metric": metric, "challenger": challenger, "champion": champion, "min_improvement": min_improvement,
            **({"task": task} if task else {})}
    mode = metric_mode(metric)
    metric = holdout_metric_name(metric, task)  # as the reasons name it
    if challenger is None or math.isnan(challenger):
        return {**base, "promote": False, "reason": f"challenger has no {metric} score"}
    if champion is None or math.isnan(champion):
        return {**base, "promote": True, "reason": "no champion yet" if champion is None else
                f"champion has no {metric} score"}
    gain = challenger - champion if mode == "max" else champion - challenger
    promote = gain > min_improvement
    verb = "beats" if promote else "does not beat"
    return {**base, "promote": promote, "improvement": gain,
            "reason": f"challenger {verb} champion by more than {min_improvement:g} on {metric} "
                      f"({challenger:.4f} vs {champion:.4f})"}
