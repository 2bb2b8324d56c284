"""Policy rendering (golden), local evaluation, and the broker ACL derived from the same document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet import policy
from iotfleet.errors import PolicyError
from iotfleet.policy import ThingVariables, acl_lines, evaluate, render, render_claim
from iotfleet.topics import TopicScheme, filter_matches

GOLDEN = Path(__file__).parent / "golden"
LAMP = ThingVariables("lamp-1", {"tenant": "acme", "site": "hq"})


def arn(kind: str, rest: str) -> str:
    return f"arn:aws:iot:eu-west-1:123456789012:{kind}/{rest}"


def test_device_policy_matches_golden() -> None:
    """The golden file was checked by hand against IOT_CORE.md section 5's least-privilege example."""
    rendered = render(TopicScheme(), region="eu-west-1", account="123456789012")
    assert rendered == json.loads((GOLDEN / "device-policy.json").read_text())


def test_claim_policy_matches_golden() -> None:
    rendered = render_claim("iotfleet-default", region="eu-west-1", account="123456789012")
    assert rendered == json.loads((GOLDEN / "claim-policy.json").read_text())


def test_device_acl_matches_golden() -> None:
    lines = acl_lines(render(TopicScheme()), "lamp-1", LAMP)
    assert lines == (GOLDEN / "device-acl.txt").read_text().splitlines()


@pytest.mark.parametrize(
    ("action", "resource", "allowed"),
    [
        ("iot:Connect", arn("client", "lamp-1"), True),
        ("iot:Connect", arn("client", "lamp-2"), False),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-1/power"), True),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-2/power"), False),
        ("iot:Publish", arn("topic", "dt/other/hq/lamp-1/power"), False),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-1"), False),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/update"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/name/cfg/get"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/delete"), False),
        ("iot:Publish", arn("topic", "$aws/things/lamp-2/shadow/update"), False),
        ("iot:Subscribe", arn("topicfilter", "cmd/acme/hq/lamp-1/+"), True),
        ("iot:Subscribe", arn("topicfilter", "cmd/acme/hq/lamp-2/+"), False),
        ("iot:Subscribe", arn("topicfilter", "cmd/acme/hq/#"), False),
        ("iot:Receive", arn("topic", "$aws/things/lamp-1/shadow/get/accepted"), True),
        ("iot:Receive", arn("topic", "cmd/acme/hq/lamp-1/dim"), True),
        ("iot:Receive", arn("topic", "dt/acme/hq/lamp-1/power"), False),
    ],
)
def test_device_policy_is_least_privilege(action: str, resource: str, allowed: bool) -> None:
    assert evaluate(render(TopicScheme()), action, resource, LAMP) is allowed


def test_unattached_certificate_cannot_connect() -> None:
    detached = ThingVariables("lamp-1", {"tenant": "acme", "site": "hq"}, attached=False)
    assert not evaluate(render(TopicScheme()), "iot:Connect", arn("client", "lamp-1"), detached)


def test_missing_attribute_denies() -> None:
    """An unresolved policy variable means access denied (IOT_CORE.md section 5)."""
    no_site = ThingVariables("lamp-1", {"tenant": "acme"})
    assert not evaluate(render(TopicScheme()), "iot:Publish", arn("topic", "dt/acme/hq/lamp-1/power"), no_site)
    assert "topic write dt/acme/hq/lamp-1/+/#" not in acl_lines(render(TopicScheme()), "lamp-1", no_site)


def test_explicit_deny_wins_and_plus_is_literal_in_policies() -> None:
    doc = {
        "Version": "2012-10-17",  # escapes such as ${*} (and variables) need it, as in IAM
        "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": arn("topic", "a/*")},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": arn("topic", "a/secret")},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": arn("topicfilter", "b/+")},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": arn("topic", "c/${*}")},
        ],
    }
    assert evaluate(doc, "iot:Publish", arn("topic", "a/x/y"), LAMP)
    assert not evaluate(doc, "iot:Publish", arn("topic", "a/secret"), LAMP)
    assert evaluate(doc, "iot:Subscribe", arn("topicfilter", "b/+"), LAMP)
    assert not evaluate(doc, "iot:Subscribe", arn("topicfilter", "b/x"), LAMP)
    assert evaluate(doc, "iot:Receive", arn("topic", "c/*"), LAMP)
    assert not evaluate(doc, "iot:Receive", arn("topic", "c/x"), LAMP)
    with pytest.raises(PolicyError, match="Deny"):
        acl_lines(doc, "lamp-1", LAMP)


def test_partial_level_wildcards_cannot_become_acl_lines() -> None:
    doc = {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": arn("topic", "a/b*")}]}
    with pytest.raises(PolicyError, match="whole-level"):
        acl_lines(doc, "lamp-1", LAMP)


def test_a_condition_the_acl_cannot_express_is_an_error_not_a_silent_allow() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceIp": "1.2.3.4"}},
            }
        ]
    }
    assert not evaluate(doc, "iot:Publish", arn("topic", "x"), LAMP)  # the engine knows it: no source IP here
    with pytest.raises(PolicyError, match="not supported"):  # the broker ACL does not
        acl_lines(doc, "lamp-1", LAMP)


# The broker enforces the ACL; AWS enforces the policy. They must agree on every topic a device can
# publish or receive. Topics are drawn from levels that include the thing's own values, so that
# both outcomes occur often.
ids = st.sampled_from(
    [
        "acme",
        "hq",
        "lamp-1",
        "lamp-2",
        "other",
        "power",
        "dt",
        "cmd",
        "shadow",
        "get",
        "update",
        "delete",
        "name",
        "things",
        "$aws",
        "accepted",
        "",
    ]
)
topics = st.lists(ids, min_size=1, max_size=8).map("/".join)
scheme_templates = st.sampled_from(
    [
        TopicScheme(),
        TopicScheme(data="things/{thing}/{tenant}/{site}/{stream}", command="cmd/{site}/{tenant}/{thing}/{command}"),
    ]
)


SPANNING_SHADOW_NAME = re.compile(r"\$aws/things/lamp-1/shadow/name/[^/]*/.*/(get|update)")


def acl_allows(lines: list[str], access: str, topic: str) -> bool:
    """mosquitto's check: any ``topic <access>`` line whose filter matches (MQTT '#' semantics)."""
    return any(
        filter_matches(line.split(" ", 2)[2], topic, hash_matches_parent=True)
        for line in lines
        if line.startswith(f"topic {access} ") or line.startswith("topic readwrite ")
    )


@given(topics, scheme_templates)
def test_acl_and_policy_agree_on_single_level_ids(topic: str, scheme: TopicScheme) -> None:
    doc = render(scheme)
    lines = acl_lines(doc, "lamp-1", LAMP)
    for action, access in (("iot:Publish", "write"), ("iot:Receive", "read")):
        in_policy = evaluate(doc, action, arn("topic", topic), LAMP)
        in_acl = acl_allows(lines, access, topic)
        if SPANNING_SHADOW_NAME.fullmatch(topic):
            assert in_acl <= in_policy, f"ACL broader than policy for {action} {topic!r}"
        else:
            assert in_acl == in_policy, f"{action} {topic!r}: policy {in_policy}, ACL {in_acl}"


def test_acl_is_narrower_only_for_shadow_names_spanning_levels() -> None:
    """The one known difference: the policy's `name/*/get` also matches `name/a/b/get`, which is not
    a valid shadow topic (shadow names cannot contain '/'); the ACL's `name/+/get` does not."""
    topic = "$aws/things/lamp-1/shadow/name/a/b/get"
    doc = render(TopicScheme())
    assert SPANNING_SHADOW_NAME.fullmatch(topic)
    assert evaluate(doc, "iot:Publish", arn("topic", topic), LAMP)
    assert not acl_allows(acl_lines(doc, "lamp-1", LAMP), "write", topic)


@given(st.text(min_size=1, max_size=60))
def test_acl_is_never_broader_than_policy(topic: str) -> None:
    doc = render(TopicScheme())
    lines = acl_lines(doc, "lamp-1", LAMP)
    for action, access in (("iot:Publish", "write"), ("iot:Receive", "read")):
        if acl_allows(lines, access, topic):
            assert evaluate(doc, action, arn("topic", topic), LAMP)


def test_attribute_variable_names_are_configurable() -> None:
    doc = render(TopicScheme(), tenant_attribute="tenantId", site_attribute="siteId")
    text = json.dumps(doc)
    assert policy.thing_attribute("tenantId") in text
    assert policy.thing_attribute("tenant") not in text
