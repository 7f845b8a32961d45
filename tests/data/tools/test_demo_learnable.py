"""The demo's promise: each modality alone confuses a pair of classes, so fusing them beats any single one.

Checked with a linear model on simple features of the pipeline's aligned output (not the project's own trainer,
so this holds the data to its design independently of the model code).
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.streaming.split import build_split, resolve_classes
from pipeline.spec import load_spec

pytestmark = pytest.mark.ray


def features(spec, split, classes):
    rows = build_split(spec, split, classes).kept().to_pandas()
    n = len(rows)
    image = np.stack(rows["image"].to_numpy()).astype(np.float32).reshape(n, 8, 4, 8, 4, 3).mean((2, 4))
    spectrum = np.abs(np.fft.rfft(np.stack(rows["audio"].to_numpy()), axis=1))[:, :4000]
    text = np.zeros((n, 512))
    for i, ids in enumerate(np.stack(rows["text"].to_numpy())):
        np.add.at(text[i], ids[ids > 0] % 512, 1)
    return {"image": image.reshape(n, -1), "audio": spectrum.reshape(n, 200, 20).mean(2), "text": text}, \
        rows["label"].to_numpy()


def test_fusion_beats_every_single_modality(ray_session, demo_dir):
    spec = load_spec(demo_dir / "spec.yaml")
    classes = resolve_classes(spec)
    (train, y_train), (test, y_test) = features(spec, "train", classes), features(spec, "test", classes)
    train["fused"] = np.hstack([train[m] for m in ("image", "audio", "text")])
    test["fused"] = np.hstack([test[m] for m in ("image", "audio", "text")])
    score = {}
    for name in train:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced"))
        model.fit(train[name], y_train)
        score[name] = balanced_accuracy_score(y_test, model.predict(test[name]))
    best_single = max(score[m] for m in ("image", "audio", "text"))
    assert score["fused"] > best_single + 0.1, score
    assert score["fused"] > 0.9, score
