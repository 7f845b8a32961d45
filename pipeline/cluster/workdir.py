"""The job's working_dir: the project code and the resolved spec, staged in a folder of their own.

Uploading the repository root would carry data, run outputs and git history; the cluster already has mmpipe's
dependencies installed (cluster.yaml), and the shipped pipeline/ shadows the installed one (the job's working
directory comes first on sys.path), so the submitted code version is the one that runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pipeline

SHIPPED_SPEC = "job_spec.yaml"
# gitignore-style, as Ray's runtime_env "excludes" reads them; also applied while staging.
DEFAULT_EXCLUDES = ["__pycache__/", "*.pyc", ".git/", "runs/", "*.tar", "*.tar.gz", "*.tgz"]


def project_root() -> Path:
    return Path(pipeline.__file__).resolve().parent.parent


def stage_working_dir(dest: Path, spec_yaml: str, extra_excludes: list[str]) -> Path:
    """Copy pipeline/ (and pyproject.toml, when the code runs from a checkout) into ``dest`` with the spec."""
    root = project_root()
    patterns = [p.rstrip("/") for p in DEFAULT_EXCLUDES + extra_excludes]
    shutil.copytree(root / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns(*patterns))
    if (root / "pyproject.toml").is_file():
        shutil.copy2(root / "pyproject.toml", dest / "pyproject.toml")
    (dest / SHIPPED_SPEC).write_text(spec_yaml, encoding="utf-8")
    return dest
