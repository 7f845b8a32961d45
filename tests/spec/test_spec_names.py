"""The static name tables (pipeline/spec_names.py) equal the registries and the libraries they stand for, a shallow
spec check loads neither torch nor an augmentation library, and the default tune search is a valid search."""

import subprocess
import sys

import pytest

from pipeline import spec_names

pytestmark = pytest.mark.fast


def test_registry_tables_equal_the_registries():
    from pipeline.model.fusion import fusion_names
    from pipeline.model.losses import LOSSES
    from pipeline.train.optim import OPTIMIZERS

    assert list(spec_names.FUSIONS) == fusion_names()
    assert list(spec_names.OPTIMIZERS) == list(OPTIMIZERS)
    assert list(spec_names.LOSSES) == list(LOSSES)


def test_transform_tables_equal_the_libraries_names():
    """The names the data path's ``lookup`` accepts, per role (a library upgrade that adds or drops one fails here:
    copy the printed list into pipeline/spec_names.py)."""
    import albumentations
    import audiomentations

    from pipeline.data.stages.augment import audio, image, text

    real = {"image": sorted(n for n, c in vars(albumentations).items() if image._is_transform(c)),
            "text": sorted(n for n, c in text._namespace().items() if text._is_transform(c)),
            "audio": sorted(n for n, c in vars(audiomentations).items() if audio._is_transform(c))}
    for role, names in real.items():
        assert sorted(spec_names.TRANSFORMS[role]) == names, f"{role}: {names}"


def test_a_shallow_check_loads_no_torch_and_no_augmentation_library(demo_dir):
    code = ("import sys; from pipeline.spec_checks import load_job; "
            f"load_job({str(demo_dir / 'spec.yaml')!r}, deep=False); "
            "print(sorted({'torch', 'ray', 'albumentations', 'nlpaug', 'audiomentations'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_shallow_and_deep_checks_find_what_each_should(demo_dir):
    from pipeline.spec import SpecError
    from pipeline.spec_checks import check_deep, load_job

    with pytest.raises(SpecError, match=r"augment.image.0: unknown albumentations transform 'HorizontalFlipp' "
                                        r"\(did you mean HorizontalFlip\?\)"):
        load_job(demo_dir / "spec.yaml", ["augment.image=[{name: HorizontalFlipp}]"], deep=False)
    bad_param = ["augment.image=[{name: HorizontalFlip, params: {nonsense: 3}}]"]
    shallow = load_job(demo_dir / "spec.yaml", bad_param, deep=False)  # a parameter needs the library: later
    with pytest.raises(SpecError, match=r"augment.image.0: HorizontalFlip"):
        check_deep(shallow)
    with pytest.raises(SpecError, match=r"augment.image.0: HorizontalFlip"):
        load_job(demo_dir / "spec.yaml", bad_param)  # deep by default


@pytest.mark.parametrize("search_alg", ["random", "optuna"])
def test_the_default_search_space_is_a_valid_search(demo_dir, search_alg):
    from pipeline.spec import _validated, read_spec_file
    from pipeline.spec_checks import load_job, registries
    from pipeline.tune.space import DEFAULT_SEARCH_SPACE, default_space, problems, searched_space

    spec = load_job(demo_dir / "spec.yaml", [f"tune.search_alg={search_alg}"], deep=False)
    space, is_default = searched_space(spec)
    assert is_default and set(space) == {"model.fusion", "train.optimizer", "train.lr"} == set(DEFAULT_SEARCH_SPACE)
    assert space == default_space(search_alg)
    assert ("grid" in space["model.fusion"]) == (search_alg == "random")  # optuna cannot take a grid
    raw, source, _ = read_spec_file(demo_dir / "spec.yaml", [])
    assert problems(raw, space, lambda r: _validated(r, source, registries())) == []
