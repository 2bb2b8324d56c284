"""Shadow document semantics (IOT_CORE.md section 2): merge, delta, metadata, versions, limits, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.errors import ShadowRejected
from iotfleet.shadow.document import (
    RECREATE_WINDOW_S,
    ShadowLimits,
    StoredShadow,
    compute_delta,
    delete,
    get,
    merge,
    update,
)

NOW = 1_790_000_000


def req(**body: Any) -> bytes:
    return json.dumps(body).encode()


def apply(shadow: StoredShadow | None, now: int = NOW, **body: Any) -> StoredShadow:
    return update(shadow, req(**body), now).shadow


def rejected(call: Any) -> tuple[int, str]:
    with pytest.raises(ShadowRejected) as info:
        call()
    return info.value.code, info.value.error


def test_partial_deep_merge_and_null_deletion() -> None:
    s = apply(None, state={"desired": {"light": {"dim": 40, "color": "warm"}, "mode": "auto"}})
    s = apply(s, state={"desired": {"light": {"dim": 60}}})
    assert s.desired == {"light": {"dim": 60, "color": "warm"}, "mode": "auto"}
    s = apply(s, state={"desired": {"mode": None, "light": {"color": None}}})
    assert s.desired == {"light": {"dim": 60}}
    s = apply(s, state={"desired": None})
    assert s.desired is None
    assert s.meta_desired == {}


def test_arrays_are_replaced_whole_and_may_not_hold_null() -> None:
    s = apply(None, state={"reported": {"zones": [1, 2, 3]}})
    s = apply(s, state={"reported": {"zones": [4]}})
    assert s.reported == {"zones": [4]}
    code, error = rejected(lambda: update(s, req(state={"reported": {"zones": [1, None]}}), NOW))
    assert code == 400
    assert "arrays cannot contain null" in error


def test_delta_keeps_the_path_and_ignores_reported_only_keys() -> None:
    desired = {"light": {"dim": 60, "color": "warm"}, "mode": "auto", "zones": [1, 2]}
    reported = {"light": {"dim": 60, "color": "cold"}, "firmware": "1.2", "zones": [1, 2]}
    assert compute_delta(desired, reported) == {"light": {"color": "warm"}, "mode": "auto"}
    assert compute_delta(None, reported) == {}


def test_accepted_echoes_only_the_request_fields_with_timestamps() -> None:
    s = apply(None, state={"desired": {"a": 1, "b": 2}})
    out = update(s, req(state={"desired": {"a": 5}}, clientToken="t-1"), NOW + 10)
    assert out.accepted == {
        "state": {"desired": {"a": 5}},
        "metadata": {"desired": {"a": {"timestamp": NOW + 10}}},
        "version": 2,
        "timestamp": NOW + 10,
        "clientToken": "t-1",
    }
    assert out.shadow.meta_desired == {"a": {"timestamp": NOW + 10}, "b": {"timestamp": NOW}}


def test_documents_omit_previous_on_creation_and_carry_both_after() -> None:
    first = update(None, req(state={"reported": {"dim": 10}}), NOW)
    assert "previous" not in first.documents
    assert first.documents["current"]["version"] == 1
    second = update(first.shadow, req(state={"reported": {"dim": 20}}), NOW + 1)
    assert second.documents["previous"]["state"]["reported"] == {"dim": 10}
    assert second.documents["current"]["state"]["reported"] == {"dim": 20}
    assert second.documents["current"]["version"] == 2


def test_delta_message_only_when_out_of_sync_with_desired_metadata() -> None:
    out = update(None, req(state={"desired": {"dim": 50}}, clientToken="c"), NOW)
    assert out.delta == {
        "state": {"dim": 50},
        "metadata": {"dim": {"timestamp": NOW}},
        "version": 1,
        "timestamp": NOW,
        "clientToken": "c",
    }
    in_sync = update(out.shadow, req(state={"reported": {"dim": 50}}), NOW + 5)
    assert in_sync.delta is None
    drift = update(in_sync.shadow, req(state={"reported": {"dim": 30}}), NOW + 6)  # reported-only update
    assert drift.delta is not None
    assert drift.delta["state"] == {"dim": 50}
    assert drift.delta["metadata"] == {"dim": {"timestamp": NOW}}  # the desired metadata, not the reported


def test_version_checks_and_conflicts() -> None:
    s = apply(None, state={"desired": {"a": 1}})
    assert apply(s, version=1, state={"desired": {"a": 2}}).version == 2
    assert rejected(lambda: update(s, req(version=5, state={"desired": {}}), NOW)) == (409, "Version conflict")
    assert rejected(lambda: update(s, req(version="1", state={"desired": {}}), NOW)) == (400, "Invalid version")
    assert rejected(lambda: update(s, req(version=True, state={"desired": {}}), NOW)) == (400, "Invalid version")


def test_nulling_every_field_keeps_the_shadow_and_increments_the_version() -> None:
    s = apply(None, state={"desired": {"a": 1}})
    s = apply(s, state={"desired": {"a": None}})
    assert s.exists
    assert s.version == 2
    assert s.desired == {}


@pytest.mark.parametrize(
    ("payload", "code", "error"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1, 2]", 400, "Invalid JSON"),
        (b"\xff\xfe", 415, "Unsupported documented encoding; supported encoding is UTF-8"),
        (req(clientToken="x"), 400, "Missing required node: state"),
        (req(state=[1]), 400, "State node must be an object"),
        (req(state={"delta": {"a": 1}}), 400, "State contains an invalid node"),
        (req(state={"desired": 5}), 400, "Desired node must be an object"),
        (req(state={"reported": "x"}), 400, "Reported node must be an object"),
        (req(state={"desired": {}}, clientToken="x" * 65), 400, "Invalid clientToken"),
        (
            req(state={"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}),
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (req(state={"desired": {"blob": "x" * 8200}}), 413, "The payload exceeds the maximum size allowed"),
    ],
)
def test_bad_requests_get_aws_codes_and_messages(payload: bytes, code: int, error: str) -> None:
    assert rejected(lambda: update(None, payload, NOW)) == (code, error)


def test_client_token_is_echoed_in_rejections() -> None:
    with pytest.raises(ShadowRejected) as info:
        update(None, req(state={"delta": {}}, clientToken="tok"), NOW)
    assert info.value.client_token == "tok"  # noqa: S105 - a shadow clientToken, not a secret


def test_depth_limit_is_configurable() -> None:
    five = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    assert update(None, req(state={"desired": five}), NOW, ShadowLimits(max_depth=5)).shadow.version == 1
    code, error = rejected(lambda: update(None, req(state={"desired": {"x": five}}), NOW, ShadowLimits(max_depth=5)))
    assert (code, error) == (400, "JSON contains too many levels of nesting; maximum is 5")


def test_size_limit_applies_to_the_merged_document() -> None:
    s = apply(None, state={"desired": {"a": "x" * 4000}})
    s = apply(s, state={"reported": {"b": "y" * 4000}})
    code, _ = rejected(lambda: update(s, req(state={"reported": {"c": "z" * 300}}), NOW))
    assert code == 413


def test_get_returns_state_metadata_and_delta() -> None:
    s = apply(None, state={"desired": {"dim": 50}, "reported": {"dim": 20, "fw": "1"}})
    doc = get(s, req(clientToken="g"), NOW + 1, thing="lamp-1")
    assert doc["state"] == {"desired": {"dim": 50}, "reported": {"dim": 20, "fw": "1"}, "delta": {"dim": 50}}
    assert doc["metadata"]["delta"] == {"dim": {"timestamp": NOW}}
    assert (doc["version"], doc["clientToken"]) == (1, "g")
    assert "delta" not in get(apply(s, state={"reported": {"dim": 50}}), b"", NOW, thing="lamp-1")["state"]


def test_missing_shadow_is_404_with_the_quoted_name() -> None:
    assert rejected(lambda: get(None, b"", NOW, thing="HelloWorld")) == (
        404,
        "No shadow exists with name: 'HelloWorld'",
    )
    assert rejected(lambda: delete(None, b"{}", NOW, thing="t", name="cfg")) == (
        404,
        "No shadow exists with name: 'cfg'",
    )


def test_delete_keeps_the_version_for_48_hours() -> None:
    s = apply(apply(None, state={"desired": {"a": 1}}), state={"desired": {"a": 2}})
    gone, accepted = delete(s, req(clientToken="d"), NOW, thing="t")
    assert accepted == {"version": 2, "timestamp": NOW, "clientToken": "d"}
    assert rejected(lambda: get(gone, b"", NOW, thing="t"))[0] == 404
    assert apply(gone, NOW + 10, state={"desired": {"a": 3}}).version == 3
    assert apply(gone, NOW + RECREATE_WINDOW_S + 1, state={"desired": {"a": 3}}).version == 1


def test_stored_shadow_round_trips_through_json() -> None:
    s = apply(None, state={"desired": {"a": [1, 2]}, "reported": {"b": {"c": True}}})
    assert StoredShadow.from_json(s.to_json()) == s


# --------------------------------------------------------------------------- properties

keys = st.sampled_from(["a", "b", "c", "dim", "mode"])
leaves = st.one_of(
    st.integers(-5, 5), st.booleans(), st.sampled_from(["x", "y"]), st.lists(st.integers(0, 3), max_size=3)
)
documents = st.recursive(leaves, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12).filter(
    lambda v: isinstance(v, dict)
)
patches = st.recursive(
    st.one_of(leaves, st.none()), lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12
).filter(lambda v: isinstance(v, dict))


def leaf_paths(doc: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(doc, dict) and doc:
        return set().union(*(leaf_paths(v, (*prefix, k)) for k, v in doc.items()))
    return {prefix}


@given(documents, documents)
def test_delta_is_desired_minus_reported_and_reporting_it_clears_it(
    desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    delta = compute_delta(desired, reported)
    assert leaf_paths(delta) <= leaf_paths(desired) | {()}
    assert compute_delta(desired, merge(reported, delta)) == {}  # reporting the delta brings the shadow in sync
    assert compute_delta(desired, desired) == {}


@given(documents, patches)
def test_merge_then_null_deletes_and_other_keys_survive(base: dict[str, Any], patch: dict[str, Any]) -> None:
    merged = merge(base, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == value
    for key in base.keys() - patch.keys():
        assert merged[key] == base[key]
    assert merge(merged, patch) == merged  # re-applying the same update changes nothing more


@given(st.lists(patches, min_size=1, max_size=6))
def test_each_accepted_update_increments_the_version_by_one(patch_list: list[dict[str, Any]]) -> None:
    shadow: StoredShadow | None = None
    for i, patch in enumerate(patch_list, start=1):
        shadow = update(shadow, req(state={"desired": patch}), NOW + i).shadow
        assert shadow.version == i


@pytest.mark.parametrize(
    "number",
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400],
)
def test_numbers_that_are_not_json_or_beyond_a_double_are_400_invalid_json(number: str) -> None:
    """``1e400`` was stored and then served as ``Infinity``, which is not JSON."""
    payload = f'{{"state": {{"reported": {{"power_w": {number}}}}}, "clientToken": "t-1"}}'.encode()
    with pytest.raises(ShadowRejected) as info:
        update(None, payload, NOW)
    assert (info.value.code, info.value.error) == (400, "Invalid JSON")


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(min_value=-(2**63), max_value=2**63))
def test_every_accepted_number_is_served_back_as_strict_json(value: float) -> None:
    outcome = update(None, req(state={"reported": {"x": value}}), NOW)
    served = json.dumps(outcome.shadow.state(), allow_nan=False)  # raises on NaN or Infinity
    assert json.loads(served) == {"reported": {"x": value}}
