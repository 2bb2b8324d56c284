"""Config models raise ConfigError (an IotFleetError) naming the model, the field and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from iotfleet.config import LOCAL_FAST, Endpoint, Identity, OutboxPolicy, PublishLimits, ReconnectPolicy
from iotfleet.errors import ConfigError, IotFleetError

PEM = Path("/nonexistent")


@pytest.mark.parametrize(
    ("model", "values", "expected"),
    [
        (Endpoint, {"region": "eu-west-1", "host": "h", "port": 0}, "Endpoint: port: Input should be greater"),
        (Endpoint, {"region": "EU West", "host": "h"}, "Endpoint: region: region name 'EU West': use 1-32"),
        (Endpoint, {"region": "eu", "host": "h", "tls": True}, "Endpoint: tls: unknown field; known: region, host"),
        (Identity, {"thing_name": "lamp-1", "cert_file": PEM, "key_file": PEM}, "Identity: ca_file: required"),
        (ReconnectPolicy, {"keepalive_s": -1}, "ReconnectPolicy: keepalive_s: Input should be greater"),
        (ReconnectPolicy, {"min_backoff_s": 10, "max_backoff_s": 1}, "max_backoff_s (1.0) must be >= min_backoff_s"),
        (
            ReconnectPolicy,
            {"stable_after_s": 5, "failover_after_s": 3},
            "stable_after_s (5.0) must be less than failover_after_s (3.0)",
        ),
        (
            ReconnectPolicy,
            {"stable_after_s": "soon"},
            "ReconnectPolicy: stable_after_s: Input should be a valid",
        ),
        (OutboxPolicy, {"max_messages": 0}, "OutboxPolicy: max_messages: Input should be greater than or equal to 1"),
        (OutboxPolicy, {"overflow": "explode"}, "OutboxPolicy: overflow: Input should be 'drop-oldest'"),
        (PublishLimits, {"max_payload_bytes": 10**9}, "PublishLimits: max_payload_bytes: Input should be less"),
        (PublishLimits, {"max_publishes_per_s": 0}, "(got 0)"),
    ],
)
def test_each_config_model_raises_config_error_naming_the_field(
    model: type[BaseModel], values: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        model(**values)
    assert expected in info.value.message
    assert isinstance(info.value, IotFleetError)
    assert isinstance(info.value.__cause__, ValidationError)  # translated, not lost
    with pytest.raises(ConfigError) as again:
        model.model_validate(values)
    assert expected in again.value.message


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        ReconnectPolicy(keepalive_s=0, ping_timeout_s=-1)
    assert "keepalive_s" in info.value.message
    assert "ping_timeout_s" in info.value.message


def test_a_frozen_model_refuses_assignment_with_config_error() -> None:
    policy = ReconnectPolicy()
    with pytest.raises(ConfigError, match=r"ReconnectPolicy is frozen: .*model_copy\(update=\{'keepalive_s'"):
        policy.keepalive_s = 5  # type: ignore[misc]  # the assignment the type checker refuses too


def test_a_config_model_inside_a_users_model_still_validates_as_its_field() -> None:
    """Nested validation keeps pydantic's per-field errors; a ConfigError raised in a user's validator is a
    ValueError, so pydantic reports it as that field's problem."""

    class Device(BaseModel):
        policy: ReconnectPolicy
        address: str = "localhost:8883"

        @field_validator("address")
        @classmethod
        def _endpoint(cls, value: str) -> str:
            Endpoint.parse(value, region="eu")
            return value

    with pytest.raises(ValidationError, match=r"policy\.keepalive_s"):
        Device(policy={"keepalive_s": 0})
    with pytest.raises(ValidationError, match="address") as info:
        Device.model_validate({"policy": {}, "address": "localhost:99999"})
    assert "Endpoint: port" in str(info.value)


def test_the_local_preset_proves_stable_before_it_fails_over_and_variants_are_validated() -> None:
    assert LOCAL_FAST.stable_after_s < LOCAL_FAST.failover_after_s
    assert LOCAL_FAST.model_copy(update={"keepalive_s": 30}).keepalive_s == 30
    with pytest.raises(ConfigError, match=r"stable_after_s \(5.0\) must be less than failover_after_s"):
        LOCAL_FAST.model_copy(update={"stable_after_s": 5.0})  # pydantic's own copy would not have checked
