"""Check a cluster-launcher YAML (cluster.yaml) offline, the way `ray up` does before it contacts any machine."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = "REPLACE_ME"


def ray_schema() -> dict[str, Any]:
    """The JSON schema shipped inside the installed ray (the one `ray up` validates against)."""
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_cluster_config(path: str | Path) -> dict[str, Any]:
    """Validate the file as written (schema), then as `ray up` sees it (defaults merged, node types filled in,
    Ray's own validate_config). Returns the prepared config; raises jsonschema.ValidationError or ValueError."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(Path(path).read_text())
    jsonschema.validate(raw, ray_schema())
    # prepare_config merges the provider's defaults.yaml and, for provider.type local, builds the node type from
    # head_ip/worker_ips. It reads files only; the cloud bootstrap (EC2 calls) comes later in `ray up`.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def placeholders(node: Any, path: str = "") -> list[str]:
    """Dotted paths of every value still holding a REPLACE_ME placeholder."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in placeholders(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in placeholders(v, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and PLACEHOLDER in node else []
