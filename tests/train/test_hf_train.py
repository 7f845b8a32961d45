"""model.hf end to end: a 2-worker DDP training on the tiny demo data with a Hugging Face text encoder (a tiny random
BERT and its tokenizer, written by the test: nothing is downloaded), frozen for its first epoch then fine-tuned,
then batch prediction with the run's best.pt."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.spec import dump_spec
from pipeline.spec_checks import load_job
from support.hf_models import text_folder

pytest.importorskip("transformers")  # the mmpipe[hf] extra; the test extra installs it
from safetensors.torch import load_file  # noqa: E402 - installed with transformers

pytestmark = pytest.mark.slow


def test_train_with_an_hf_text_encoder_then_predict(ray_session, tiny_demo, tmp_path):
    from pipeline.predict import predict
    from pipeline.registry import Registry
    from pipeline.train.trainer import run_training

    bert = text_folder(tmp_path / "bert")
    spec = load_job(tiny_demo / "spec.yaml", ["train.epochs=2", "train.batch_size=16", "model.hidden=32",
                                              "augment.enabled=false", f"model.hf.text={bert}",
                                              "model.freeze={text: 1}", "model.pretrained_lr_scale=0.5"])
    result = run_training(spec, tmp_path / "run")
    assert result.metrics["epochs_run"] == 2

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["spec"]["model"]["hf"]["text"] == str(bert)
    name = "embeddings.word_embeddings.weight"
    original = load_file(bert / "model.safetensors")[name]
    assert best["model"][f"encoders.text.backbone.{name}"].shape == original.shape  # the BERT is in best.pt
    # each epoch's checkpoint: the BERT frozen in epoch 1 (feature extraction), fine-tuned from epoch 2 on
    states = [torch.load(f, weights_only=True)
              for f in sorted((tmp_path / "run" / "ray" / "train").glob("checkpoint_*/state.pt"))]
    assert [s["epoch"] for s in states] == [0, 1]
    assert [torch.equal(s["model"][f"encoders.text.backbone.{name}"], original) for s in states] == [True, False]

    registry = Registry(str(tmp_path / "registry"))
    version = registry.register((tmp_path / "run" / "best.pt").read_bytes(), dump_spec(spec),
                                {"metrics": result.metrics, "holdout": "test"}, "hf-run")
    out = tmp_path / "pred.parquet"
    shards = sorted(str(p) for p in (tiny_demo / "test").glob("*.tar"))
    done = predict(f"{registry.uri}:{version}", shards, str(out), batch_size=32)
    table = pq.read_table(out).to_pandas()
    ok = table[table["status"] == "ok"]
    assert done.predicted == len(ok) > 0 and ok["pred_class"].notna().all()
    # the same model on the same rows (those with a label): training's own test accuracy, exactly
    labelled = ok[ok["label_index"] >= 0]
    assert len(labelled) == result.metrics["test.rows"]
    assert (labelled["pred_index"] == labelled["label_index"]).mean() == pytest.approx(result.metrics["test.accuracy"])
