"""Device Shadow document semantics, pure and shared by the local shadow service and the device client.

Rules (shared/IOT_CORE.md section 2):

- an update is a partial deep merge of ``state.desired`` / ``state.reported``; a field set to ``null`` is
  deleted, ``"desired": null`` removes the whole section; arrays are replaced whole and may not hold ``null``;
- the delta holds every desired leaf that differs from reported (absent from reported included), keeping
  the path from the root; reported-only keys never appear;
- each leaf carries a metadata timestamp (epoch seconds); the version increments on every accepted update,
  a request's ``version`` must equal the current one (409), and delete keeps the version, which a shadow
  recreated within 48 hours continues;
- limits: desired + reported at most 8 KB after the merge (413), nesting depth (default 6, configurable:
  sources disagree between 5, 6 and 8), clientToken at most 64 bytes;
- a request must be JSON as RFC 8259 defines it: ``NaN``, ``Infinity`` and numbers beyond a double
  (``1e400``), which Python's :mod:`json` accepts or turns into ``inf``, are 400 "Invalid JSON", so a stored
  shadow is always served as JSON.

Where AWS documents no behaviour, the choice is stated in the code: objects emptied by deletions are
removed; arrays are leaves with one timestamp; a delta is published after every update that leaves one.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Final

from iotfleet.errors import ShadowRejected

__all__ = [
    "RECREATE_WINDOW_S",
    "NotJson",
    "ShadowLimits",
    "StoredShadow",
    "UpdateOutcome",
    "compute_delta",
    "delete",
    "get",
    "loads_strict",
    "merge",
    "parse_request",
    "update",
]

RECREATE_WINDOW_S: Final = 48 * 3600
Json = dict[str, Any]
_MAX_DOUBLE: Final = int(sys.float_info.max)


class NotJson(ValueError):
    """Text Python's :mod:`json` would accept that is not JSON: NaN, Infinity, a number beyond a double."""


def _refuse_constant(name: str) -> Any:
    raise NotJson(f"payload holds {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"number {text[:40]} is out of range (beyond a double)")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if abs(value) > _MAX_DOUBLE:
        raise NotJson(f"number {text[:40]}... is out of range (beyond a double)")
    return value


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that raises :class:`NotJson` for NaN, Infinity and numbers beyond a double.

    Any other decoding problem is a ``ValueError``, as from :func:`json.loads`.
    """
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_finite_int)


@dataclass(frozen=True, slots=True)
class ShadowLimits:
    """The service's limits; ``max_depth`` is configurable because AWS's sources disagree (5, 6, 8)."""

    max_bytes: int = 8192
    max_depth: int = 6
    max_client_token_bytes: int = 64


@dataclass(slots=True)
class StoredShadow:
    """A shadow as the service keeps it. ``exists`` is False after a delete (the version is kept)."""

    desired: Json | None = None
    reported: Json | None = None
    meta_desired: Json = field(default_factory=dict)
    meta_reported: Json = field(default_factory=dict)
    version: int = 0
    exists: bool = False
    deleted_at: float | None = None

    def _present(self, desired: Json | None, reported: Json | None) -> Json:
        """``desired`` and ``reported`` keyed by section name, for the sections this shadow has."""
        out: Json = {}
        if self.desired is not None:
            out["desired"] = desired
        if self.reported is not None:
            out["reported"] = reported
        return out

    def state(self) -> Json:
        return self._present(self.desired, self.reported)

    def metadata(self) -> Json:
        return self._present(self.meta_desired, self.meta_reported)

    def to_json(self) -> str:
        return json.dumps(
            {
                "desired": self.desired,
                "reported": self.reported,
                "meta_desired": self.meta_desired,
                "meta_reported": self.meta_reported,
                "version": self.version,
                "exists": self.exists,
                "deleted_at": self.deleted_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> StoredShadow:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """What an accepted update produced: the new shadow and the three messages to publish."""

    shadow: StoredShadow
    accepted: Json
    documents: Json
    delta: Json | None


def _reject(code: int, error: str, token: str | None = None) -> ShadowRejected:
    return ShadowRejected(code, error, client_token=token)


def _client_token(request: Json, limits: ShadowLimits) -> str | None:
    token = request.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode()) > limits.max_client_token_bytes:
        raise _reject(400, "Invalid clientToken")
    return token


def parse_request(payload: bytes, limits: ShadowLimits = ShadowLimits()) -> tuple[Json, str | None]:
    """Decode a request payload; an empty payload (get, delete) is ``{}``. Returns the object and its token."""
    if not payload.strip():
        return {}, None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject(415, "Unsupported documented encoding; supported encoding is UTF-8") from None
    try:
        request = loads_strict(text)
    except ValueError:  # NotJson too: NaN, Infinity and 1e400 are not JSON
        raise _reject(400, "Invalid JSON") from None
    if not isinstance(request, dict):
        raise _reject(400, "Invalid JSON")
    return request, _client_token(request, limits)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_depth(v) for v in value), default=0)
    return 0


def _has_null_in_array(value: Any, in_array: bool = False) -> bool:
    if value is None:
        return in_array
    if isinstance(value, dict):
        return any(_has_null_in_array(v, in_array) for v in value.values())
    if isinstance(value, list):
        return any(_has_null_in_array(v, True) for v in value)
    return False


def merge(base: Json | None, patch: Json) -> Json:
    """Deep-merge ``patch`` into a copy of ``base``: ``None`` deletes; objects merge; anything else replaces.

    An object left empty by deletions is removed (AWS does not document this case).
    """
    out: Json = copy.deepcopy(base) if base else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            child = merge(out.get(key) if isinstance(out.get(key), dict) else None, value)
            if child or not value:
                out[key] = child
            else:
                out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _stamp(patch: Json, meta: Json | None, now: int) -> Json:
    """Metadata after applying ``patch``: a ``{"timestamp": now}`` per written leaf, removed with its field."""
    out: Json = copy.deepcopy(meta) if meta else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            previous = out.get(key)
            child = _stamp(value, previous if isinstance(previous, dict) and "timestamp" not in previous else None, now)
            if child or not value:
                out[key] = child
            else:
                out.pop(key, None)
        else:
            out[key] = {"timestamp": now}
    return out


def _request_meta(patch: Json, now: int) -> Json:
    """The ``metadata`` echoed in ``/update/accepted``: one timestamp per field of the request."""
    return {k: _request_meta(v, now) if isinstance(v, dict) and v else {"timestamp": now} for k, v in patch.items()}


def compute_delta(desired: Json | None, reported: Json | None) -> Json:
    """Every desired leaf that differs from reported, with its path; reported-only keys never appear."""
    out: Json = {}
    reported = reported or {}
    for key, want in (desired or {}).items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            child = compute_delta(want, have)
            if child:
                out[key] = child
        elif want != have:
            out[key] = want
    return out


def _restrict(meta: Json, shape: Json) -> Json:
    """The metadata of the keys in ``shape`` (the delta's metadata is the desired metadata of its keys)."""
    out: Json = {}
    for key, value in shape.items():
        m = meta.get(key, {})
        out[key] = _restrict(m, value) if isinstance(value, dict) and value and "timestamp" not in m else m
    return out


_MISSING: Final = object()


def _current(shadow: StoredShadow, now: float) -> StoredShadow:
    """The shadow a request sees: a deleted one keeps its version for 48 hours, then starts from 0."""
    if shadow.exists or shadow.deleted_at is None or now - shadow.deleted_at < RECREATE_WINDOW_S:
        return shadow
    return StoredShadow()


def update(
    stored: StoredShadow | None, payload: bytes, now: int, limits: ShadowLimits = ShadowLimits()
) -> UpdateOutcome:
    """Apply an ``/update`` request; raise :class:`ShadowRejected` with AWS's code and text if it is refused."""
    request, token = parse_request(payload, limits)
    sections, version = _validate_update(request, token, limits)
    old = _current(stored or StoredShadow(), now)
    if version is not None and version != old.version:
        raise _reject(409, "Version conflict", token)
    new = StoredShadow(
        desired=old.desired,
        reported=old.reported,
        meta_desired=old.meta_desired,
        meta_reported=old.meta_reported,
        version=old.version + 1,
        exists=True,
    )
    for name, value in sections.items():
        meta_name = f"meta_{name}"
        if value is None:
            setattr(new, name, None)
            setattr(new, meta_name, {})
        else:
            setattr(new, name, merge(getattr(old, name), value))
            setattr(new, meta_name, _stamp(value, getattr(old, meta_name), now))
    size = len(json.dumps(new.state(), separators=(",", ":")).encode())
    if size > limits.max_bytes:
        raise _reject(413, "The payload exceeds the maximum size allowed", token)

    accepted: Json = {
        "state": dict(sections),
        "metadata": {name: _request_meta(value, now) for name, value in sections.items() if value},
        "version": new.version,
        "timestamp": now,
    }
    documents: Json = {"current": _snapshot(new), "timestamp": now}
    if old.exists:
        documents["previous"] = _snapshot(old)
    delta = compute_delta(new.desired, new.reported)
    delta_message: Json | None = None
    if delta:
        delta_message = {
            "state": delta,
            "metadata": _restrict(new.meta_desired, delta),
            "version": new.version,
            "timestamp": now,
        }
    if token is not None:
        for message in (accepted, documents, delta_message):
            if message is not None:
                message["clientToken"] = token
    return UpdateOutcome(new, accepted, documents, delta_message)


def _validate_update(
    request: Json, token: str | None, limits: ShadowLimits
) -> tuple[dict[str, Json | None], int | None]:
    """The request's sections and version, or the rejection AWS gives, in AWS's order of checks."""
    if "state" not in request:
        raise _reject(400, "Missing required node: state", token)
    state = request["state"]
    if not isinstance(state, dict):
        raise _reject(400, "State node must be an object", token)
    if "delta" in state:
        raise _reject(400, "State contains an invalid node", token)
    sections: dict[str, Json | None] = {}
    for name in ("desired", "reported"):
        if name in state:
            value = state[name]
            if value is not None and not isinstance(value, dict):
                raise _reject(400, f"{name.capitalize()} node must be an object", token)
            sections[name] = value
    version = request.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise _reject(400, "Invalid version", token)
    if any(_depth(v) > limits.max_depth for v in sections.values() if v):
        raise _reject(400, f"JSON contains too many levels of nesting; maximum is {limits.max_depth}", token)
    if any(_has_null_in_array(v) for v in sections.values() if v):
        raise _reject(400, "Invalid JSON: arrays cannot contain null", token)
    return sections, version


def _snapshot(shadow: StoredShadow) -> Json:
    return {
        "state": {"desired": shadow.desired or {}, "reported": shadow.reported or {}},
        "metadata": {"desired": shadow.meta_desired, "reported": shadow.meta_reported},
        "version": shadow.version,
    }


def _not_found(thing: str, name: str | None, token: str | None) -> ShadowRejected:
    return _reject(404, f"No shadow exists with name: '{name or thing}'", token)


def get(
    stored: StoredShadow | None,
    payload: bytes,
    now: int,
    *,
    thing: str,
    name: str | None = None,
    limits: ShadowLimits = ShadowLimits(),
) -> Json:
    """The ``/get/accepted`` document: state and metadata with the delta when non-empty."""
    _, token = parse_request(payload, limits)
    if stored is None or not stored.exists:
        raise _not_found(thing, name, token)
    state, metadata = stored.state(), stored.metadata()
    delta = compute_delta(stored.desired, stored.reported)
    if delta:
        state["delta"] = delta
        metadata["delta"] = _restrict(stored.meta_desired, delta)
    out: Json = {"state": state, "metadata": metadata, "version": stored.version, "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return out


def delete(
    stored: StoredShadow | None,
    payload: bytes,
    now: int,
    *,
    thing: str,
    name: str | None = None,
    limits: ShadowLimits = ShadowLimits(),
) -> tuple[StoredShadow, Json]:
    """Delete: the shadow is gone but keeps its version (``/delete/accepted`` carries that version)."""
    _, token = parse_request(payload, limits)
    if stored is None or not stored.exists:
        raise _not_found(thing, name, token)
    gone = StoredShadow(version=stored.version, exists=False, deleted_at=now)
    out: Json = {"version": stored.version, "timestamp": now}
    if token is not None:
        out["clientToken"] = token
    return gone, out
