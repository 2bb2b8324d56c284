"""Policy rendering (golden), local evaluation, and the broker ACL derived from the same document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iotfleet import policy
from iotfleet.policy import ThingVariables, evaluate, render, render_claim
from iotfleet.topics import TopicScheme

GOLDEN = Path(__file__).parent / "golden"
LAMP = ThingVariables("lamp-1", {"tenant": "acme", "site": "hq"})


def arn(kind: str, rest: str) -> str:
    return f"arn:aws:iot:eu-west-1:123456789012:{kind}/{rest}"


def test_device_policy_matches_golden() -> None:
    """The golden file was checked by hand against IOT_CORE.md section 5's least-privilege example (and the
    Basic Ingest resource against section 3: the thing's own data topics, through the ingest rule only;
    the jobs resources against section 10: the thing's own requests, answers and events)."""
    rendered = render(TopicScheme(), region="eu-west-1", account="123456789012")
    assert rendered == json.loads((GOLDEN / "device-policy.json").read_text())


def test_claim_policy_matches_golden() -> None:
    rendered = render_claim("iotfleet-default", region="eu-west-1", account="123456789012")
    assert rendered == json.loads((GOLDEN / "claim-policy.json").read_text())


@pytest.mark.parametrize(
    ("action", "resource", "allowed"),
    [
        ("iot:Connect", arn("client", "lamp-1"), True),
        ("iot:Connect", arn("client", "lamp-2"), False),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-1/power"), True),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-2/power"), False),
        ("iot:Publish", arn("topic", "dt/other/hq/lamp-1/power"), False),
        ("iot:Publish", arn("topic", "dt/acme/hq/lamp-1"), False),
        ("iot:Publish", arn("topic", "$aws/rules/iotfleet_ingest/dt/acme/hq/lamp-1/power"), True),  # Basic Ingest
        ("iot:Publish", arn("topic", "$aws/rules/iotfleet_ingest/dt/acme/hq/lamp-2/power"), False),
        ("iot:Publish", arn("topic", "$aws/rules/other_rule/dt/acme/hq/lamp-1/power"), False),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/update"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/name/cfg/get"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/shadow/delete"), False),
        ("iot:Publish", arn("topic", "$aws/things/lamp-2/shadow/update"), False),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/jobs/start-next"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/jobs/fw-2/update"), True),
        ("iot:Publish", arn("topic", "$aws/things/lamp-1/jobs/notify"), False),  # the service's event
        ("iot:Publish", arn("topic", "$aws/things/lamp-2/jobs/get"), False),
        ("iot:Subscribe", arn("topicfilter", "$aws/things/lamp-1/jobs/start-next/+"), True),  # IotJobsClientV2's
        ("iot:Subscribe", arn("topicfilter", "$aws/things/lamp-2/jobs/notify"), False),
        ("iot:Receive", arn("topic", "$aws/things/lamp-1/jobs/notify-next"), True),
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


def test_a_condition_on_a_key_the_request_lacks_denies() -> None:
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
    assert not evaluate(doc, "iot:Publish", arn("topic", "x"), LAMP)  # no source IP in this request


def test_attribute_variable_names_are_configurable() -> None:
    doc = render(TopicScheme(), tenant_attribute="tenantId", site_attribute="siteId")
    text = json.dumps(doc)
    assert policy.thing_attribute("tenantId") in text
    assert policy.thing_attribute("tenant") not in text
