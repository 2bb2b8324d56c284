"""Topic rules (IOT_CORE.md section 3), scoping and filter matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from iotfleet.errors import ConfigError, TopicError
from iotfleet.topics import (
    ShadowOp,
    ShadowTopics,
    ThingScope,
    TopicScheme,
    create_certificate_from_csr_topic,
    filter_matches,
    register_thing_topic,
    slash_count,
    validate_filter,
    validate_id,
    validate_thing_name,
    validate_topic,
)

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
THING_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-"
ids = st.text(ID_CHARS, min_size=1, max_size=20)
things = st.text(THING_CHARS, min_size=1, max_size=40)
levels = st.text(st.characters(exclude_characters="/+#\x00", exclude_categories=["Cs"]), max_size=12)


def rule_of(call: object) -> str:
    with pytest.raises(TopicError) as info:
        call()  # type: ignore[operator]
    return info.value.rule


@given(tenant=ids, site=ids, thing=things, stream=ids)
def test_scoped_data_topic_round_trips(tenant: str, site: str, thing: str, stream: str) -> None:
    scheme = TopicScheme()
    scope = ThingScope(tenant, site, thing)
    topic = scheme.data_topic(scope, stream)
    assert topic == f"dt/{tenant}/{site}/{thing}/{stream}"
    assert scheme.parse_data_topic(topic) == (scope, stream)
    assert filter_matches(scheme.data_filter(scope), topic)
    assert filter_matches(scheme.data_filter(), topic)


@given(bad=st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), st.sampled_from("/+#$ "), st.text(max_size=5)))
def test_ids_cannot_smuggle_levels_wildcards_or_reserved_prefix(bad: str) -> None:
    assert rule_of(lambda: ThingScope(bad, "site", "thing")) == "tenant-id"
    assert rule_of(lambda: ThingScope("tenant", bad, "thing")) == "site-id"
    assert rule_of(lambda: validate_thing_name(bad)) == "thing-name"


def test_thing_name_length_limit_is_128() -> None:
    assert validate_thing_name("a" * 128) == "a" * 128
    assert rule_of(lambda: validate_thing_name("a" * 129)) == "thing-name"
    assert rule_of(lambda: validate_id("stream", "")) == "stream-id"


@given(st.lists(levels, min_size=1, max_size=12))
def test_slash_limit_is_seven(parts: list[str]) -> None:
    topic = "/".join(parts)
    assume(topic and not topic.startswith("$") and len(topic.encode()) <= 256)
    if topic.count("/") <= 7:
        assert validate_topic(topic) == topic
    else:
        assert rule_of(lambda: validate_topic(topic)) == "max-slashes"


def test_basic_ingest_prefix_does_not_count_towards_slashes() -> None:
    deep = "a/b/c/d/e/f/g/h"  # 7 slashes: the most a topic may have
    assert slash_count(f"$aws/rules/ingest/{deep}") == 7
    assert validate_topic(f"$aws/rules/ingest/{deep}")
    assert rule_of(lambda: validate_topic(f"$aws/rules/ingest/{deep}/i")) == "max-slashes"
    assert rule_of(lambda: validate_topic("$aws/rules/bad-name!/x")) == "basic-ingest"


def test_byte_limit_counts_utf8_bytes_not_characters() -> None:
    assert validate_topic("é" * 128)  # 256 bytes
    assert rule_of(lambda: validate_topic("é" * 129)) == "max-bytes"
    assert rule_of(lambda: validate_topic("a" * 257)) == "max-bytes"


@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("", "empty"),
        ("a/+/b", "wildcard"),
        ("a/#", "wildcard"),
        ("a\x00b", "nul"),
        ("\ud800", "utf-8"),
        ("$SYS/broker", "reserved"),
        ("$aws/things/t/shadow/update/accepted", "reserved"),
        ("$aws/things/t/jobs/notify", "reserved"),  # the service's event, not a request
    ],
)
def test_publish_topic_rules_name_the_failed_rule(topic: str, rule: str) -> None:
    assert rule_of(lambda: validate_topic(topic)) == rule


@pytest.mark.parametrize(
    "topic",
    [
        "$aws/things/lamp-1/shadow/update",
        "$aws/things/lamp-1/shadow/name/config/get",
        "$aws/certificates/create-from-csr/json",
        "$aws/certificates/create/cbor",
        "$aws/provisioning-templates/iotfleet-default/provision/json",
    ],
)
def test_documented_reserved_topics_may_be_published(topic: str) -> None:
    assert validate_topic(topic) == topic


def test_error_message_says_what_to_do() -> None:
    with pytest.raises(TopicError, match="at most 7") as info:
        validate_topic("a/b/c/d/e/f/g/h/i")
    assert info.value.value == "a/b/c/d/e/f/g/h/i"


@pytest.mark.parametrize(
    ("topic_filter", "rule"),
    [
        ("a/b#", "hash-position"),
        ("a/#/b", "hash-position"),
        ("a/b+", "plus-position"),
        ("$aws/rules/r/x", "basic-ingest"),
        ("$share/g", "shared"),
        ("$share/g+/a", "shared"),
        ("$SYS/#", "reserved"),
    ],
)
def test_bad_filters_are_refused(topic_filter: str, rule: str) -> None:
    assert rule_of(lambda: validate_filter(topic_filter)) == rule


@pytest.mark.parametrize(
    "topic_filter", ["#", "+", "a/+/c", "a/#", "$share/ingest/dt/+/+/+/+", "$aws/things/t/shadow/+/accepted"]
)
def test_good_filters_are_accepted(topic_filter: str) -> None:
    assert validate_filter(topic_filter) == topic_filter


@given(st.lists(levels, min_size=1, max_size=8), st.data())
def test_filter_wildcards_match_like_mqtt(parts: list[str], data: st.DataObject) -> None:
    topic = "/".join(parts)
    assume(not topic.startswith("$"))
    assert filter_matches(topic, topic)
    i = data.draw(st.integers(0, len(parts) - 1))
    plus = [*parts[:i], "+", *parts[i + 1 :]]
    assert filter_matches("/".join(plus), topic)
    assert filter_matches("/".join([*parts[:i], "#"]), topic)
    assert not filter_matches("/".join([*parts, "x"]), topic)
    # IoT Core: '#' does not match the parent level; MQTT says it does.
    assert not filter_matches(f"{topic}/#", topic)
    assert filter_matches(f"{topic}/#", topic, hash_matches_parent=True)
    assert filter_matches(f"{topic}/#", f"{topic}/")


def test_leading_wildcards_do_not_match_dollar_topics() -> None:
    assert not filter_matches("#", "$aws/things/t/shadow/get")
    assert not filter_matches("+/things/t/shadow/get", "$aws/things/t/shadow/get")
    assert filter_matches("$aws/things/+/shadow/get", "$aws/things/t/shadow/get")
    assert filter_matches("$share/g/a/+", "a/b")


def test_shadow_topics_classic_and_named() -> None:
    classic = ShadowTopics("lamp-1")
    assert classic.request(ShadowOp.UPDATE) == "$aws/things/lamp-1/shadow/update"
    assert classic.accepted(ShadowOp.GET) == "$aws/things/lamp-1/shadow/get/accepted"
    assert classic.delta == "$aws/things/lamp-1/shadow/update/delta"
    named = ShadowTopics("lamp-1", "config")
    assert named.rejected(ShadowOp.DELETE) == "$aws/things/lamp-1/shadow/name/config/delete/rejected"
    assert named.documents == "$aws/things/lamp-1/shadow/name/config/update/documents"
    # the longest named-shadow topic still fits IoT Core's limits
    longest = ShadowTopics("t" * 128, "n" * 64).documents
    assert validate_filter(longest) == longest
    assert rule_of(lambda: ShadowTopics("lamp 1")) == "thing-name"
    assert rule_of(lambda: ShadowTopics("lamp-1", "a/b")) == "shadow-name"


def test_provisioning_topics() -> None:
    assert create_certificate_from_csr_topic() == "$aws/certificates/create-from-csr/json"
    assert register_thing_topic("tmpl") == "$aws/provisioning-templates/tmpl/provision/json"
    assert rule_of(lambda: register_thing_topic("a/b")) == "template-id"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("dt/{tenant}/{site}/{stream}", "lacks {thing}"),
        ("dt/{tenant}/{site}/{thing}", "must end with {stream}"),
        ("dt/{tenant}/{site}/x{thing}/{stream}", "whole level"),
        ("dt/{tenant}/{site}/{thing}/{bogus}/{stream}", "unknown field"),
        ("d+t/{tenant}/{site}/{thing}/{stream}", "invalid template level"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(data: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"TopicScheme: data: .*{re.escape(message)}"):
        TopicScheme(data=data)


def test_custom_scheme_scopes_commands() -> None:
    scheme = TopicScheme(data="fleet/{tenant}/{site}/{thing}/{stream}", command="c/{tenant}/{site}/{thing}/{command}")
    scope = ThingScope("acme", "hq", "lamp-1")
    assert scheme.command_topic(scope, "dim") == "c/acme/hq/lamp-1/dim"
    assert scheme.parse_command_topic("c/acme/hq/lamp-1/dim") == (scope, "dim")
    assert scheme.parse_data_topic("c/acme/hq/lamp-1/dim") is None
    assert scheme.parse_data_topic("fleet/acme/hq/lamp 1/x") is None
    assert scheme.command_filter() == "c/+/+/+/+"
