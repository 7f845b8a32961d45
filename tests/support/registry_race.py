"""The child side of the registry's promotion race (tests/test_registry.py), in a module of its own: a spawned child
imports only this and the registry, not the test module with torch (which made each child take seconds)."""

from __future__ import annotations

from pipeline.registry import PromotionConflict, Registry


def promote_after_barrier(uri: str, version: int, start, results) -> None:
    reg = Registry(uri)
    current = reg.alias("champion")
    start.wait()  # both decide against the same champion, then race
    try:
        reg.set_alias("champion", version, expected=current)
        results.put(("won", version))
    except PromotionConflict:
        results.put(("lost", version))
