"""The policy engine: CreatePolicy's validation and IoT Core's authorization rules, one test per rule,
plus properties (hypothesis) for the wildcard matcher and the evaluation logic."""

from __future__ import annotations

import json
import random
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.errors import PolicyError
from iotfleet.policy_engine import MAX_POLICY_CHARS, Decision, PolicyDocument, RequestContext, authorize

ARN = "arn:aws:iot:eu-west-1:123456789012"
LAMP = RequestContext(client_id="lamp-1", thing_name="lamp-1", attributes={"tenant": "acme"})
STRANGER = RequestContext(client_id="lamp-1")  # the certificate is attached to no thing named lamp-1


def doc(*statements: dict[str, Any], version: str | None = "2012-10-17") -> PolicyDocument:
    body: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        body["Version"] = version
    return PolicyDocument.parse(json.dumps(body))


def allow(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: str | list[str], resource: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def decide(policies: list[PolicyDocument], action: str, resource: str, context: RequestContext = LAMP) -> Decision:
    return authorize(policies, action, resource, context)


# --------------------------------------------------------------------------- evaluation


def test_nothing_allowed_is_denied_and_an_explicit_deny_wins_over_any_allow() -> None:
    publish_all = doc(allow("iot:Publish", f"{ARN}:topic/*"))
    no_secrets = doc(deny("iot:Publish", f"{ARN}:topic/secret/*"))
    assert decide([], "iot:Publish", f"{ARN}:topic/a") is Decision.IMPLICIT_DENY
    assert decide([publish_all], "iot:Publish", f"{ARN}:topic/a") is Decision.ALLOW
    assert decide([publish_all, no_secrets], "iot:Publish", f"{ARN}:topic/secret/x") is Decision.EXPLICIT_DENY
    assert decide([no_secrets, publish_all], "iot:Publish", f"{ARN}:topic/secret/x") is Decision.EXPLICIT_DENY
    assert decide([publish_all, no_secrets], "iot:Publish", f"{ARN}:topic/public") is Decision.ALLOW


def test_star_crosses_levels_question_mark_is_one_character_and_plus_and_hash_are_literal() -> None:
    policy = [
        doc(
            allow("iot:Publish", f"{ARN}:topic/dt/*"),
            allow("iot:Subscribe", [f"{ARN}:topicfilter/cmd/+", f"{ARN}:topicfilter/log/?"]),
        )
    ]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/dt/a/b/c").allowed  # * spans '/'
    assert decide(policy, "iot:Publish", f"{ARN}:topic/dt/").allowed  # and matches nothing at all
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/dt").allowed
    assert decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/cmd/+").allowed  # the literal filter
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/cmd/reboot").allowed  # + is no wildcard
    assert decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/log/a").allowed
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/log/ab").allowed


def test_a_deny_on_a_filter_pattern_does_not_stop_a_wider_literal_filter() -> None:
    """The DG's own example: Deny topicfilter/a/restricted/* does not stop a subscription to a/#."""
    restricted = deny("iot:Subscribe", f"{ARN}:topicfilter/a/restricted/*")
    policy = [doc(allow("iot:Subscribe", f"{ARN}:topicfilter/a/*"), restricted)]
    assert decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/a/#").allowed
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/a/restricted/x").allowed


def test_actions_match_without_regard_to_case_and_take_wildcards() -> None:
    policy = [doc(allow("iot:Pub*", f"{ARN}:topic/a"), allow("IOT:RECEIVE", f"{ARN}:topic/a"))]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/a").allowed
    assert decide(policy, "iot:Receive", f"{ARN}:topic/a").allowed
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topic/a").allowed
    assert decide([doc(allow("*", "*"))], "iot:Connect", f"{ARN}:client/anything").allowed


def test_not_action_and_not_resource_cover_everything_they_do_not_name() -> None:
    policy = [
        doc(
            allow("iot:*", "*"),
            {"Effect": "Deny", "Action": "iot:Receive", "NotResource": f"{ARN}:topic/public/*"},
            {"Effect": "Deny", "NotAction": ["iot:Connect", "iot:Receive"], "Resource": f"{ARN}:topic/ro/*"},
        )
    ]
    assert decide(policy, "iot:Receive", f"{ARN}:topic/public/x").allowed
    assert decide(policy, "iot:Receive", f"{ARN}:topic/private/x") is Decision.EXPLICIT_DENY
    assert decide(policy, "iot:Publish", f"{ARN}:topic/ro/x") is Decision.EXPLICIT_DENY
    assert decide(policy, "iot:Publish", f"{ARN}:topic/rw/x").allowed


def test_thing_variables_resolve_only_for_a_thing_attached_to_the_certificate() -> None:
    policy = [
        doc(
            allow(
                "iot:Connect",
                f"{ARN}:client/${{iot:Connection.Thing.ThingName}}",
                Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            ),
            allow("iot:Publish", f"{ARN}:topic/${{iot:Connection.Thing.Attributes[tenant]}}/*"),
        )
    ]
    assert decide(policy, "iot:Connect", f"{ARN}:client/lamp-1").allowed
    assert not decide(policy, "iot:Connect", f"{ARN}:client/lamp-2").allowed
    assert not decide(policy, "iot:Connect", f"{ARN}:client/lamp-1", STRANGER).allowed
    assert decide(policy, "iot:Publish", f"{ARN}:topic/acme/x").allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/acme/x", STRANGER).allowed
    no_tenant = RequestContext(client_id="lamp-1", thing_name="lamp-1")
    assert not decide(policy, "iot:Publish", f"{ARN}:topic//x", no_tenant).allowed  # unresolved: no match


def test_an_unresolved_variable_matches_nothing_in_a_deny_too() -> None:
    policy = [
        doc(
            allow("iot:Publish", f"{ARN}:topic/*"),
            deny("iot:Publish", f"{ARN}:topic/${{iot:Connection.Thing.Attributes[banned]}}"),
        )
    ]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/anything").allowed
    banned = RequestContext(client_id="lamp-1", thing_name="lamp-1", attributes={"banned": "anything"})
    assert decide(policy, "iot:Publish", f"{ARN}:topic/anything", banned) is Decision.EXPLICIT_DENY


def test_a_client_id_is_substituted_as_literal_text_even_with_wildcard_characters() -> None:
    policy = [doc(allow("iot:Subscribe", f"{ARN}:topicfilter/my/${{iot:ClientId}}/topic"))]
    plus = RequestContext(client_id="+")
    star = RequestContext(client_id="a*")
    assert decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/my/+/topic", plus).allowed  # the DG's warning
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/my/x/topic", plus).allowed
    assert decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/my/a*/topic", star).allowed
    assert not decide(policy, "iot:Subscribe", f"{ARN}:topicfilter/my/abc/topic", star).allowed


def test_escapes_are_literal_characters() -> None:
    policy = [doc(allow("iot:Publish", f"{ARN}:topic/a${{*}}b${{?}}c${{$}}"))]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/a*b?c$").allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/axbycz").allowed


def test_variables_are_text_in_a_document_without_the_2012_version() -> None:
    policy = [doc(allow("iot:Publish", f"{ARN}:topic/${{iot:ClientId}}"), version=None)]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/${{iot:ClientId}}").allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/lamp-1").allowed


def test_certificate_variables_skip_values_holding_wildcards() -> None:
    context = RequestContext(
        client_id="c",
        certificate={"Subject.CommonName": "lamp-1", "Subject.Organization": ["acme", "a+b"]},
    )
    policy = [
        doc(
            allow("iot:Publish", f"{ARN}:topic/${{iot:Certificate.Subject.CommonName}}"),
            allow("iot:Publish", f"{ARN}:topic/org/${{iot:Certificate.Subject.Organization}}"),
            allow("iot:Publish", f"{ARN}:topic/org2/${{iot:Certificate.Subject.Organization.1}}"),
        )
    ]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/lamp-1", context).allowed
    assert decide(policy, "iot:Publish", f"{ARN}:topic/org/acme", context).allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/org2/a+b", context).allowed  # not substituted


def test_conditions_follow_iam_for_missing_keys_quantifiers_and_if_exists() -> None:
    def allowed(condition: dict[str, Any], context: RequestContext = LAMP) -> bool:
        policy = [doc(allow("iot:Connect", "*", Condition=condition))]
        return decide(policy, "iot:Connect", f"{ARN}:client/x", context).allowed

    assert allowed({"StringEquals": {"iot:ClientId": ["lamp-1", "lamp-2"]}})
    assert not allowed({"StringEquals": {"iot:ClientId": "lamp-2"}})
    assert allowed({"StringLike": {"iot:ClientId": "lamp-*"}})
    assert allowed({"StringEqualsIgnoreCase": {"iot:ClientId": "LAMP-1"}})
    assert not allowed({"StringEquals": {"aws:SourceIp": "10.0.0.1"}})  # a missing key fails a positive operator
    assert allowed({"StringNotEquals": {"aws:SourceIp": "10.0.0.1"}})  # and satisfies a negated one
    assert allowed({"StringEqualsIfExists": {"aws:SourceIp": "10.0.0.1"}})
    assert allowed({"Null": {"aws:SourceIp": "true"}})
    assert not allowed({"Null": {"iot:ClientId": "true"}})
    local = RequestContext(client_id="lamp-1", source_ip="127.0.0.5")
    assert allowed({"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}, local)
    assert not allowed({"NotIpAddress": {"aws:SourceIp": ["127.0.0.0/8"]}}, local)
    assert allowed({"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}})
    listed = RequestContext(client_id="c", certificate={"Subject.OrganizationalUnit": ["ops", "lab"]})
    key = "iot:Certificate.Subject.OrganizationalUnit.List"
    assert allowed({"ForAllValues:StringEquals": {key: ["ops", "lab", "qa"]}}, listed)
    assert not allowed({"ForAllValues:StringEquals": {key: ["ops"]}}, listed)
    assert allowed({"ForAnyValue:StringEquals": {key: ["lab"]}}, listed)
    assert not allowed({"ForAnyValue:StringEquals": {key: ["qa"]}}, listed)
    assert allowed({"ForAllValues:StringEquals": {key: ["x"]}}, STRANGER)  # no values: vacuously true
    assert not allowed({"ForAnyValue:StringEquals": {key: ["x"]}}, STRANGER)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"Version": "2012-10-17"}', "Statement must be"),
        ('{"Version": "2011-01-01", "Statement": []}', "Version '2011-01-01'"),
        ('{"Statement": [{"Effect": "Allow", "Action": "iot:Connect"}]}', "exactly one of Resource and NotResource"),
        ('{"Statement": [{"Effect": "allow", "Action": "iot:Connect", "Resource": "*"}]}', "Effect must be Allow"),
        ('{"Statement": [{"Effect": "Allow", "Action": "Connect", "Resource": "*"}]}', "is not service:Action"),
        ('{"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "client/x"}]}', "is not an ARN"),
        ('{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Principal": "*"}}', "no Principal"),
        (
            '{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*", '
            '"Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}}}',
            "'DateGreaterThan' is not supported",
        ),
        (
            '{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*", '
            '"Condition": {"IpAddress": {"aws:SourceIp": "not-an-ip"}}}}',
            "not an IP address",
        ),
    ],
)
def test_what_create_policy_refuses_is_refused_with_the_reason(document: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        PolicyDocument.parse(document)


def test_every_problem_is_named_at_once() -> None:
    bad = {"Statement": [{"Effect": "Maybe", "Action": "x"}, {"Effect": "Allow", "Action": "iot:*", "Resource": "y"}]}
    with pytest.raises(PolicyError) as caught:
        PolicyDocument.parse(bad)
    message = caught.value.message
    assert "Statement[0]: Effect" in message
    assert "Statement[0].Action: 'x'" in message
    assert "Statement[1].Resource: 'y' is not an ARN" in message


def test_the_size_limit_counts_characters_without_whitespace() -> None:
    statement = allow("iot:Publish", f"{ARN}:topic/x")
    base = json.dumps({"Version": "2012-10-17", "Statement": [statement]}, separators=(",", ":"))
    fits = base.replace("topic/x", "topic/" + "x" * (MAX_POLICY_CHARS - len(base) + 1))
    assert len(fits) == MAX_POLICY_CHARS
    PolicyDocument.parse(fits.replace(",", ",\n     "))  # whitespace is free
    too_long = f"2049 characters without whitespace; IoT Core takes 1 to {MAX_POLICY_CHARS}$"
    with pytest.raises(PolicyError, match=too_long):
        PolicyDocument.parse(fits.replace("topic/x", "topic/xx"))


# --------------------------------------------------------------------------- properties

TEXT = st.text(alphabet=string.ascii_letters + string.digits + "/+#-_.$", max_size=20)


@given(TEXT)
def test_a_resource_without_wildcards_matches_exactly_itself(topic: str) -> None:
    policy = [doc(allow("iot:Publish", f"{ARN}:topic/{topic}"))]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/{topic}").allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/{topic}x").allowed


@given(TEXT, st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=20))
def test_a_star_stands_for_any_run_of_characters(topic: str, start: int, length: int) -> None:
    start = min(start, len(topic))
    pattern = topic[:start] + "*" + topic[start + length :]
    policy = [doc(allow("iot:Publish", f"{ARN}:topic/{pattern}"))]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/{topic}").allowed
    if start > 0:  # the text before the star is still required
        assert not decide(policy, "iot:Publish", f"{ARN}:topic/~{topic}").allowed


@given(TEXT.filter(bool), st.data())
def test_a_question_mark_stands_for_exactly_one_character(topic: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(topic) - 1))
    pattern = topic[:index] + "?" + topic[index + 1 :]
    policy = [doc(allow("iot:Publish", f"{ARN}:topic/{pattern}"))]
    assert decide(policy, "iot:Publish", f"{ARN}:topic/{topic}").allowed
    assert not decide(policy, "iot:Publish", f"{ARN}:topic/{topic[:index] + topic[index + 1 :]}").allowed


STATEMENTS = st.lists(
    st.tuples(st.sampled_from(["Allow", "Deny"]), st.sampled_from(["a", "b", "a/*", "*", "?"])), min_size=1, max_size=6
)


@given(STATEMENTS, st.sampled_from(["a", "b", "a/x", "c"]), st.randoms(use_true_random=False))
def test_the_answer_is_the_union_of_allows_minus_any_deny_in_any_order(
    statements: list[tuple[str, str]], topic: str, rng: random.Random
) -> None:
    def single(effect: str, pattern: str) -> PolicyDocument:
        return doc({"Effect": effect, "Action": "iot:Publish", "Resource": f"{ARN}:topic/{pattern}"})

    policies = [single(e, p) for e, p in statements]
    answers = [decide([p], "iot:Publish", f"{ARN}:topic/{topic}") for p in policies]
    expected = (
        Decision.EXPLICIT_DENY
        if Decision.EXPLICIT_DENY in answers
        else Decision.ALLOW
        if Decision.ALLOW in answers
        else Decision.IMPLICIT_DENY
    )
    rng.shuffle(policies)
    assert decide(policies, "iot:Publish", f"{ARN}:topic/{topic}") is expected
