import pytest

from pipeline.spec import JobSpec, SpecError, apply_overrides, parse_override
from pipeline.spec_checks import load_job as load_spec


def write(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_exist_for_every_section():
    spec = JobSpec()
    for section in ("data", "modalities", "label", "clean", "align", "augment", "rebalance", "model", "train",
                    "scaling", "tune", "schedule"):
        assert getattr(spec, section) is not None
    assert spec.modalities.enabled() == ["image", "text", "audio"]
    assert spec.modalities.audio.num_samples == 16000


def test_relative_shard_paths_resolve_against_spec_folder_and_uris_stay(tmp_path):
    p = write(tmp_path, "data:\n  splits:\n    train: shards/train-{0..3}.tar\n    val: [s3://bucket/v-*.tar]\n")
    spec = load_spec(p)
    assert spec.data.splits["train"] == [str(tmp_path / "shards/train-{0..3}.tar")]
    assert spec.data.splits["val"] == ["s3://bucket/v-*.tar"]


def test_unknown_key_names_file_path_and_suggests(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 0.1\nmodalities:\n  image:\n    sizee: [32, 32]\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "train.learning_rate: unknown field" in msg
    assert "modalities.image.sizee: unknown field (did you mean size?)" in msg
    assert "2 problem(s)" in msg


def test_wrong_types_and_values_reported_together(tmp_path):
    p = write(tmp_path, "train:\n  epochs: many\n  lr: -1\nmodel:\n  fusion: concatt\nrebalance:\n  strategy: target\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    for path in ("train.epochs", "train.lr", "model.fusion", "rebalance"):
        assert f"  - {path}" in msg, msg
    assert "'many'" in msg


def test_set_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 2\n")
    spec = load_spec(p, ["train.epochs=7", "train.lr=0.05", "modalities.audio=null", "label.classes=[a, b]",
                         "model.fusion=gated"])
    assert spec.train.epochs == 7 and spec.train.lr == 0.05
    assert spec.modalities.audio is None and spec.modalities.enabled() == ["image", "text"]
    assert spec.label.classes == ["a", "b"]
    with pytest.raises(SpecError, match="train.epochs"):
        load_spec(p, ["train.epochs=zero"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(p, ["train.epochs"])
    with pytest.raises(SpecError, match="train.epochs is a int, not a section"):
        load_spec(p, ["train.epochs.x=1"])


def test_override_creates_missing_sections():
    raw = apply_overrides({}, ["data.splits.train=a.tar"])
    assert raw == {"data": {"splits": {"train": "a.tar"}}}
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read job spec"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(SpecError, match="mapping of sections"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_contract_conflicts_rejected(tmp_path):
    with pytest.raises(SpecError, match="claimed by both image and text"):
        load_spec(write(tmp_path, "modalities:\n  text:\n    extensions: [txt, png]\n"))
    with pytest.raises(SpecError, match="label extensions"):
        load_spec(write(tmp_path, "label:\n  extensions: [txt]\n"))
    with pytest.raises(SpecError, match="duplicate class names"):
        load_spec(write(tmp_path, "label:\n  classes: [a, b, a]\n"))
    with pytest.raises(SpecError, match="lists no shards"):
        load_spec(write(tmp_path, "data:\n  splits:\n    train: []\n"))


def test_set_plain_strings_null_sections_and_tiny_audio(tmp_path):
    p = write(tmp_path, "modalities:\n  audio: null\n")
    spec = load_spec(p, ["data.splits.train=*.tar", "data.splits.val={a,b}.tar"])
    assert spec.data.splits["train"][0].endswith("/*.tar") and spec.data.splits["val"][0].endswith("/{a,b}.tar")
    with pytest.raises(SpecError, match="modalities.audio is null"):
        load_spec(p, ["modalities.audio.seconds=2"])
    with pytest.raises(SpecError, match="modalities.text: Value error, sample_rate|need at least 1"):
        load_spec(p, ["modalities.audio={seconds: 0.00001, sample_rate: 8000}"])


def _registry_names():
    from pipeline.spec_checks import registries

    fields = {"fusion": ("model", "fusion"), "optimizer": ("train", "optimizer"), "loss": ("train", "loss")}
    return [(fields[kind], name) for kind, names in registries().items() for name in names]


@pytest.mark.parametrize("field,name", _registry_names(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_every_registered_name_is_a_valid_spec_value(field, name):
    from pipeline.spec_checks import job_from_dict

    section, key = field
    assert getattr(getattr(job_from_dict({section: {key: name}}), section), key) == name


def test_unknown_registry_names_name_the_field_and_suggest(tmp_path):
    p = write(tmp_path, "model:\n  fusion: lowrank\ntrain:\n  optimizer: adamx\n  loss: focall\n  epochs: many\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "4 problem(s)" in msg  # reported together with the schema's own problems
    assert "  - model.fusion: Value error, unknown fusion 'lowrank' (did you mean low_rank?)" in msg
    assert "  - train.optimizer: Value error, unknown optimizer 'adamx' (did you mean adam" in msg
    assert "  - train.loss: Value error, unknown loss 'focall' (did you mean focal?)" in msg


def test_registry_names_are_checked_one_floor_up_and_in_the_search_space(tmp_path):
    from pipeline.spec import spec_from_dict

    # the schema (pipeline.spec, no torch) takes any string; spec_checks holds it against the registries
    assert spec_from_dict({"model": {"fusion": "lowrank"}}).model.fusion == "lowrank"
    p = write(tmp_path, "tune:\n  search_space:\n    train.optimizer: {choice: [adam, adamx]}\n")
    with pytest.raises(SpecError, match="tune.search_space.train.optimizer: value 'adamx' makes an invalid spec: "
                                        "train.optimizer: Value error, unknown optimizer 'adamx'"):
        load_spec(p)


def test_dumped_spec_keeps_the_registry_names_as_plain_strings():
    from pipeline.spec import dump_spec

    dumped = dump_spec(JobSpec())
    assert "  fusion: concat\n" in dumped and "  optimizer: adamw\n" in dumped and "  loss: ce\n" in dumped
