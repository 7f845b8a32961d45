"""Shared construction rules for transform specs: look a name up in a library, build it, explain failures."""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Callable


class TransformError(ValueError):
    """A transform spec that cannot be built or run; the message says why, the caller adds the field path."""


def lookup(name: str, namespace: dict[str, Any], is_transform: Callable[[Any], bool], library: str) -> type:
    cls = namespace.get(name)
    if cls is None or not is_transform(cls):
        names = sorted(n for n, c in namespace.items() if is_transform(c))
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"see the {library} documentation for names"
        raise TransformError(f"unknown {library} transform {name!r} ({hint})")
    return cls


def construct(cls: type, params: dict[str, Any]) -> Any:
    """``cls(**params)``; a library warning about invalid arguments is an error here, not a silent no-op."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = cls(**params)
        except Exception as e:  # libraries raise TypeError, ValueError or their own validation errors
            raise TransformError(f"{cls.__name__}({_fmt(params)}): {str(e).splitlines()[0][:300]}") from None
    for w in caught:
        if "not valid" in str(w.message) or "unexpected" in str(w.message):
            raise TransformError(f"{cls.__name__}({_fmt(params)}): {w.message}")
    return obj


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())
