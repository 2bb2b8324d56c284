"""The broker's C authorization engine (cloud/plugin/authz.c) gives the Python reference engine's answer
(iotfleet.policy_engine) for every document, principal and request: a differential property test, with
the C engine built on its own and called through ctypes."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotfleet.cloud.authz import Principal, render_authz, write_authz
from iotfleet.policy_engine import Decision, PolicyDocument, RequestContext, authorize

ARN = "arn:aws:iot:eu-west-1:123456789012"
CODES = {Decision.ALLOW: 0, Decision.EXPLICIT_DENY: 1, Decision.IMPLICIT_DENY: 2}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: the local cloud's plugin needs one too (./dev installs gcc)")
    build = tmp_path_factory.mktemp("authz")
    source = build / "authz.c"
    source.write_bytes(resources.files("iotfleet.cloud.plugin").joinpath("authz.c").read_bytes())
    library = build / "authz.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-DAUTHZ_TEST", "-o", str(library), str(source)], check=True
    )
    lib = ctypes.CDLL(str(library))
    lib.authz_test_load.argtypes = [ctypes.c_char_p]
    lib.authz_test_check.argtypes = [ctypes.c_char_p] * 5
    return lib


def c_decision(lib: ctypes.CDLL, cn: str, client_id: str, source_ip: str | None, *request: str) -> int:
    ip = None if source_ip is None else source_ip.encode()
    action, resource = request
    return int(lib.authz_test_check(cn.encode(), client_id.encode(), ip, action.encode(), resource.encode()))


SEGMENTS = [
    "a",
    "b",
    "*",
    "?",
    "+",
    "#",
    "x?y",
    "${iot:ClientId}",
    "${iot:Connection.Thing.ThingName}",
    "${iot:Connection.Thing.Attributes[tenant]}",
    "${iot:Connection.Thing.ThingTypeName}",
    "${iot:Certificate.Subject.CommonName}",
    "${iot:Certificate.Subject.OrganizationalUnit.1}",
    "${iot:Certificate.Subject.OrganizationalUnit.2}",
    "${*}",
    "${$}",
    "${unknown}",
]
CONDITIONS: list[dict[str, Any]] = [
    {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
    {"Bool": {"iot:Connection.Thing.IsAttached": [False]}},
    {"StringEquals": {"iot:ClientId": ["lamp-1", "${iot:Connection.Thing.ThingName}"]}},
    {"StringLike": {"iot:ClientId": "lamp-*"}},
    {"StringNotLike": {"iot:ClientId": "?"}},
    {"StringEqualsIgnoreCase": {"iot:ClientId": "LAMP-1"}},
    {"StringNotEquals": {"iot:Connection.Thing.Attributes[tenant]": "acme"}},
    {"StringEqualsIfExists": {"iot:Connection.Thing.Attributes[site]": "hq"}},
    {"Null": {"iot:Connection.Thing.ThingName": "true"}},
    {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}},
    {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "::1/128"]}},
    {"ForAllValues:StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": ["ops", "lab"]}},
    {"ForAnyValue:StringLike": {"iot:Certificate.Subject.OrganizationalUnit.List": "l*"}},
    {"ArnLike": {"iot:ClientId": "*"}},
    {"StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": "ops"}},
    {"StringNotEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": "a+b"}},
]

statements = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny"]),
        "action_key": st.sampled_from(["Action", "NotAction"]),
        "actions": st.lists(
            st.sampled_from(["iot:Publish", "IOT:subscribe", "iot:*", "iot:Pub*", "iot:R?ceive"]),
            min_size=1,
            max_size=2,
        ),
        "resource_key": st.sampled_from(["Resource", "Resource", "NotResource"]),
        "resources": st.lists(
            st.one_of(
                st.just("*"),
                st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(
                    lambda parts: f"{ARN}:topic/" + "/".join(parts)
                ),
            ),
            min_size=1,
            max_size=3,
        ),
        "condition": st.one_of(st.none(), st.sampled_from(CONDITIONS)),
    }
)


def as_statement(drawn: dict[str, Any]) -> dict[str, Any]:
    statement = {
        "Effect": drawn["Effect"],
        drawn["action_key"]: drawn["actions"],
        drawn["resource_key"]: drawn["resources"],
    }
    if drawn["condition"] is not None:
        statement["Condition"] = drawn["condition"]
    return statement


documents = st.lists(
    st.tuples(st.sampled_from(["2012-10-17", None]), st.lists(statements, min_size=1, max_size=3)),
    min_size=1,
    max_size=3,
)
principals = st.fixed_dictionaries(
    {
        "thing": st.sampled_from(["lamp-1", None]),
        "thing_type": st.sampled_from(["luminaire", None]),
        "attributes": st.sampled_from([{}, {"tenant": "acme"}, {"tenant": "acme", "site": "hq"}]),
        "certificate": st.sampled_from(
            [{}, {"Subject.CommonName": "lamp-1", "Subject.OrganizationalUnit": ["ops", "lab", "a+b"]}]
        ),
    }
)
requests = st.lists(
    st.tuples(
        st.sampled_from(["lamp-1", "lamp-2", "+", "a*", "LAMP-1"]),
        st.sampled_from(["127.0.0.5", "10.1.2.3", "::1", None]),
        st.sampled_from(["iot:Publish", "iot:Subscribe", "iot:Receive", "iot:Connect"]),
        st.lists(
            st.sampled_from(
                ["a", "b", "lamp-1", "acme", "+", "#", "x", "xzy", "*", "?", "$", "luminaire", "a+b", "lab", ""]
            ),
            max_size=3,
        ).map(lambda parts: f"{ARN}:topic/" + "/".join(parts)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(documents, principals, requests)
def test_the_c_engine_answers_as_the_python_engine(
    engine: ctypes.CDLL,
    tmp_path: Path,
    docs: list[tuple[str | None, list[dict[str, Any]]]],
    who: dict[str, Any],
    asked: list[tuple[str, str | None, str, str]],
) -> None:
    parsed = []
    for version, drawn in docs:
        body: dict[str, Any] = {"Statement": [as_statement(s) for s in drawn]}
        if version is not None:
            body["Version"] = version
        parsed.append(PolicyDocument.parse(json.dumps(body)))
    principal = Principal("cert-1", list(range(len(parsed))), **who)
    path = tmp_path / "authz"
    write_authz(path, render_authz("eu-west-1", "123456789012", parsed, [principal]))
    assert engine.authz_test_load(str(path).encode()) == 0
    for client_id, source_ip, action, resource in asked:
        context = RequestContext(
            client_id=client_id,
            thing_name=who["thing"] if client_id == who["thing"] else None,
            thing_type=who["thing_type"],
            attributes=who["attributes"],
            certificate=who["certificate"],
            source_ip=source_ip,
        )
        expected = CODES[authorize(parsed, action, resource, context)]
        assert c_decision(engine, "cert-1", client_id, source_ip, action, resource) == expected, (
            client_id,
            source_ip,
            action,
            resource,
        )


def test_an_unknown_certificate_has_no_principal(engine: ctypes.CDLL, tmp_path: Path) -> None:
    path = tmp_path / "authz"
    document = PolicyDocument.parse(
        {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    )
    write_authz(path, render_authz("eu-west-1", "1", [document], [Principal("known", [0])]))
    assert engine.authz_test_load(str(path).encode()) == 0
    assert c_decision(engine, "known", "x", None, "iot:Connect", f"{ARN}:client/x") == 0
    assert c_decision(engine, "stranger", "x", None, "iot:Connect", f"{ARN}:client/x") == 3


def test_a_malformed_data_file_is_refused_whole(engine: ctypes.CDLL, tmp_path: Path) -> None:
    path = tmp_path / "authz"
    path.write_text("V\t1\teu-west-1\t1\nU\tcn\t\t\t7\n")  # names a policy that is not there
    assert engine.authz_test_load(str(path).encode()) == -1
