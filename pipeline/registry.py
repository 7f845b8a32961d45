"""The model registry: numbered, immutable versions with metadata, and aliases such as ``champion``.

Layout under the registry URI (a local folder or any fsspec URI)::

    claims/000003.json            who took version 3 (created exclusively: two registrations never share a number)
    versions/000003/model.pt      the weights (best.pt of the run: model state, classes, resolved spec)
    versions/000003/spec.yaml     the resolved job spec, for people
    versions/000003/meta.json     written last: a version without it is incomplete and never served
    aliases/champion/000007.json  the alias's 7th assignment; the newest one is current (created exclusively, so
                                  two concurrent promotions from the same state cannot both win)
    decisions/000003.json         champion/challenger decision about version 3, with both scores
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from pipeline import storage

ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
NUMBER_RE = re.compile(r"[0-9]+")  # ASCII only: str.isdigit and int() also take '١' or '²'
log = logging.getLogger("pipeline.registry")


class RegistryError(RuntimeError):
    """A registry, version or alias that cannot be used; the message names it."""


class PromotionConflict(RegistryError):
    """The alias moved while this promotion was being decided."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _name(n: int) -> str:
    return f"{n:06d}"


def _number(name: str, suffix: str = "") -> int | None:
    """The number a registry entry's name stands for (``000003.json`` -> 3), or None for any other name (``3.json``
    too: it would stand for the same number as ``000003.json``)."""
    stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    return int(stem) if NUMBER_RE.fullmatch(stem) and _name(int(stem)) == stem else None


def _numbers(names: list[str], suffix: str = "") -> list[int]:
    return sorted(n for n in (_number(name, suffix) for name in names) if n is not None)


@dataclass(frozen=True)
class ModelRef:
    """REGISTRY, REGISTRY:VERSION or REGISTRY@ALIAS (a bare REGISTRY means @champion)."""
    registry: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        m = re.match(r"^(?P<reg>.+?)(?::(?P<ver>[0-9]+)|@(?P<alias>[A-Za-z][A-Za-z0-9_-]*))?$", text)
        if not m or not m.group("reg"):
            raise RegistryError(f"{text!r} is not REGISTRY, REGISTRY:VERSION or REGISTRY@ALIAS")
        if m.group("ver"):
            return cls(m.group("reg"), version=int(m.group("ver")))
        return cls(m.group("reg"), alias=m.group("alias") or "champion")

    def __str__(self) -> str:
        return f"{self.registry}:{self.version}" if self.version is not None else f"{self.registry}@{self.alias}"


@dataclass
class LoadedModel:
    version: int
    meta: dict
    model: object          # MultimodalClassifier, eval mode, on CPU
    spec: object           # JobSpec the model was trained with
    classes: list[str]


class Registry:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def _path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    # ------------------------------------------------------------ versions

    def register(self, model_file: bytes, spec_yaml: str, meta: dict, run_id: str) -> int:
        """Add a version. Idempotent per (``run_id``, model): a resumed run registering the same model gets its
        earlier version back; a different model (the run retrained) gets a new number — versions never change."""
        sha = hashlib.sha256(model_file).hexdigest()
        version = None
        for n in _numbers(storage.listdir(self._path("claims")), ".json"):
            try:
                claim = self._read_json(self._path("claims", f"{_name(n)}.json"), f"claim {n}")
            except RegistryError:  # unreadable: not a claim this run can recognise as its own
                continue
            if claim.get("run_id") != run_id:
                continue
            meta_uri = self._path("versions", _name(n), "meta.json")
            if not storage.exists(meta_uri):
                version = n  # this run's registration that did not finish: finish it below
            elif self._read_json(meta_uri, f"version {n}").get("model_sha256") == sha:
                return n  # registered before, complete: written once, never again (its meta.json included)
        if version is None:
            version = self._claim(run_id)
        base = self._path("versions", _name(version))
        storage.write_bytes(storage.join(base, "model.pt"), model_file)
        storage.write_bytes(storage.join(base, "spec.yaml"), spec_yaml.encode("utf-8"))
        full = {**meta, "version": version, "run_id": run_id, "created": meta.get("created") or _now(),
                "model_sha256": sha}
        storage.write_json(storage.join(base, "meta.json"), full)  # last: the version is complete
        return version

    def _claim(self, run_id: str) -> int:
        body = json.dumps({"run_id": run_id, "time": _now()}).encode()
        for _ in range(1000):
            taken = _numbers(storage.listdir(self._path("claims")), ".json")
            n = (taken[-1] if taken else 0) + 1
            if storage.create_exclusive(self._path("claims", f"{_name(n)}.json"), body):
                return n
        raise RegistryError(f"{self.uri}: could not claim a version number (too many concurrent registrations)")

    def versions(self) -> list[dict]:
        """Metadata of every complete version, oldest first; incomplete ones, and stray entries in claims/ (any
        other name; hidden ones are temporary files of a registration and left out), are listed with status."""
        names = storage.listdir(self._path("claims"))
        out = []
        for n in _numbers(names, ".json"):
            meta_uri = self._path("versions", _name(n), "meta.json")
            if storage.exists(meta_uri):
                try:
                    out.append(self._read_json(meta_uri, f"version {n}"))
                except RegistryError as e:  # one bad entry must not hide the others
                    out.append({"version": n, "status": f"corrupt: {e}"})
            else:
                out.append({"version": n, "status": "incomplete (registration did not finish)"})
        return out + [{"version": f"claims/{name}", "status": "stray entry, ignored (not NNNNNN.json)"}
                      for name in names if _number(name, ".json") is None and not name.startswith(".")]

    def meta(self, version: int) -> dict:
        uri = self._path("versions", _name(version), "meta.json")
        if not storage.exists(uri):
            known = [v["version"] for v in self.versions() if "status" not in v]
            raise RegistryError(f"{self.uri}: no complete version {version} (have: "
                                f"{', '.join(map(str, known)) or 'none'})")
        return self._read_json(uri, f"version {version}")

    def _read_json(self, uri: str, what: str) -> dict:
        try:
            value = storage.read_json(uri)
        except FileNotFoundError:
            raise RegistryError(f"{self.uri}: {what}: {uri} is missing") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"{self.uri}: {what}: {uri} is corrupt (not JSON: {e})") from None
        except OSError as e:  # a folder where a file belongs, a file that cannot be read
            raise RegistryError(f"{self.uri}: {what}: {uri} cannot be read ({e.strerror or e})") from None
        if not isinstance(value, dict):
            raise RegistryError(f"{self.uri}: {what}: {uri} is corrupt (expected a JSON object)")
        return value

    def model_bytes(self, version: int) -> bytes:
        meta = self.meta(version)
        uri = self._path("versions", _name(version), "model.pt")
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise RegistryError(f"{self.uri}: version {version}: model file {uri} is missing") from None
        if hashlib.sha256(data).hexdigest() != meta.get("model_sha256"):
            raise RegistryError(f"{self.uri}: version {version}: {uri} is corrupt (sha256 differs from the one "
                                "recorded at registration)")
        return data

    def load(self, version: int) -> LoadedModel:
        from pipeline.model.checkpoint import load_model
        from pipeline.spec import SpecError

        data = self.model_bytes(version)
        where = f"{self.uri}: version {version}"
        try:
            model, spec, classes = load_model(data, f"{where} spec")
        except SpecError as e:
            raise RegistryError(f"{where}: its stored spec no longer validates with this mmpipe:\n{e}") from None
        except (KeyError, TypeError) as e:
            raise RegistryError(f"{where}: model.pt lacks {e} (not a checkpoint written by mmpipe)") from None
        except Exception as e:  # unpickling / shape errors from torch: say which version, not a deep traceback
            raise RegistryError(f"{where}: model.pt cannot be loaded ({type(e).__name__}: {str(e)[:300]})") \
                from None
        return LoadedModel(version, self.meta(version), model, spec, classes)

    # ------------------------------------------------------------ aliases

    def _alias_history(self, alias: str) -> list[int]:
        if not ALIAS_RE.match(alias):
            raise RegistryError(f"{alias!r} is not a valid alias name (letters, digits, _ and -)")
        return _numbers(storage.listdir(self._path("aliases", alias)), ".json")

    def alias_events(self, alias: str) -> list[dict]:
        return [self._read_json(self._path("aliases", alias, f"{_name(n)}.json"), f"alias {alias} entry {n}")
                for n in self._alias_history(alias)]

    def alias(self, alias: str) -> int | None:
        history = self._alias_history(alias)
        if not history:
            return None
        entry = self._read_json(self._path("aliases", alias, f"{_name(history[-1])}.json"), f"alias {alias}")
        return entry.get("version")

    def aliases(self) -> dict[str, int | None]:
        """Every readable alias and its version; one that cannot be read is left out with a warning."""
        out = {}
        for name in storage.listdir(self._path("aliases")):
            if not ALIAS_RE.match(name):
                continue
            try:
                out[name] = self.alias(name)
            except RegistryError as e:
                log.warning("alias %s left out: %s", name, e)
        return out

    def set_alias(self, alias: str, version: int, expected: int | None | str = "any", reason: str = "",
                  scores: dict | None = None) -> dict:
        """Point ``alias`` at ``version``. With ``expected`` (a version or None), only if the alias still points
        there: a compare-and-set, so a decision taken against one champion cannot overwrite another."""
        self.meta(version)  # complete versions only
        history = self._alias_history(alias)
        current = self.alias(alias)
        if expected != "any" and current != expected:
            raise PromotionConflict(f"{self.uri}: {alias} moved to version {current} while promoting version "
                                    f"{version} (decided against {expected}); decide again")
        if current == version:  # an entry "N -> N" would be history that records no change
            raise RegistryError(f"{self.uri}: {alias} already points at version {version}; nothing changed")
        seq = (history[-1] if history else 0) + 1
        entry = {"alias": alias, "version": version, "previous": current, "time": _now(), "reason": reason,
                 **({"scores": scores} if scores else {})}
        if not storage.create_exclusive(self._path("aliases", alias, f"{_name(seq)}.json"),
                                        json.dumps(entry, indent=2).encode()):
            raise PromotionConflict(f"{self.uri}: another promotion of {alias} happened at the same time; "
                                    "decide again")
        return entry

    def rollback(self, alias: str = "champion", to: int | None = None) -> dict:
        """Point ``alias`` back at ``to``, default the version it held before the current one."""
        events = self.alias_events(alias)
        if not events:
            raise RegistryError(f"{self.uri}: alias {alias!r} was never set; nothing to roll back")
        current = events[-1]["version"]
        if to is None:
            earlier = [e["version"] for e in events[:-1] if e["version"] != current]
            if not earlier:
                raise RegistryError(f"{self.uri}: {alias} has had no other version than {current}; "
                                    "nothing to roll back to")
            to = earlier[-1]
        return self.set_alias(alias, to, expected=current, reason=f"rollback from version {current}")

    def resolve(self, ref: ModelRef) -> int:
        if ref.version is not None:
            self.meta(ref.version)
            return ref.version
        version = self.alias(ref.alias or "champion")
        if version is None:
            raise RegistryError(f"{self.uri}: alias {ref.alias!r} is not set (no model promoted yet?)")
        return version

    # ------------------------------------------------------------ decisions

    def record_decision(self, version: int, decision: dict) -> None:
        storage.write_json(self._path("decisions", f"{_name(version)}.json"), decision)

    def decision(self, version: int) -> dict | None:
        uri = self._path("decisions", f"{_name(version)}.json")
        return self._read_json(uri, f"decision about {version}") if storage.exists(uri) else None
