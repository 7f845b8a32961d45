"""The data report printed off a terminal (CI, ``| tee``): one line per entry whatever its length, no colour codes,
paths and messages with [brackets] printed as they are."""

import pytest

from pipeline.data.stages.report import DataReport, SplitReport

pytestmark = pytest.mark.fast


def test_report_printed_off_a_terminal_is_not_wrapped_or_coloured(capsys):
    path = "/data/" + "long-folder-name/" * 10 + "val/[2024] 猫-000001.tar"
    split = SplitReport("val", ["cat", "dog"], shards=1, bad_shards=[
        {"path": path, "reason": "shard_unreadable", "error": "not a tar file [header 0]", "samples_kept": 0}])
    DataReport(["cat", "dog"], {"val": split}).print()  # the default console: pytest's stdout is not a terminal
    out = capsys.readouterr().out
    assert f"bad shard (val) {path}: not a tar file [header 0]" in out.splitlines()
    assert "\x1b[" not in out
