"""Topic names: IoT Core's rules, tenant/site/thing scoping, and the reserved ``$aws`` topics.

The rules are AWS IoT Core's (shared/IOT_CORE.md section 3): topics are UTF-8, at most 256 bytes and
7 slashes (the Basic Ingest prefix ``$aws/rules/<rule>/`` is not counted), publish topics carry no
wildcards, and ``$`` opens only the documented reserved topics. Thing names follow the registry's
pattern ``[a-zA-Z0-9:_-]{1,128}``; tenant, site, stream and command ids are single topic levels that
cannot smuggle ``/``, ``+``, ``#``, ``$`` or a policy variable.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydantic import field_validator

from iotfleet._model import FrozenModel
from iotfleet.errors import TopicError

__all__ = [
    "BASIC_INGEST_PREFIX",
    "INGEST_RULE",
    "MAX_TOPIC_BYTES",
    "MAX_TOPIC_SLASHES",
    "MESSAGE_ID_PROPERTY",
    "SENT_AT_PROPERTY",
    "SEQUENCE_PROPERTY",
    "JobsTopics",
    "PayloadFormat",
    "ShadowOp",
    "ShadowTopics",
    "ThingScope",
    "TopicScheme",
    "basic_ingest_topic",
    "create_certificate_from_csr_topic",
    "create_keys_and_certificate_topic",
    "filter_matches",
    "jobs_topic_prefix",
    "register_thing_topic",
    "shadow_topic_prefix",
    "slash_count",
    "split_basic_ingest",
    "validate_filter",
    "validate_id",
    "validate_rule_name",
    "validate_shadow_name",
    "validate_thing_name",
    "validate_topic",
]

MAX_TOPIC_BYTES: Final = 256
MAX_TOPIC_SLASHES: Final = 7
BASIC_INGEST_PREFIX: Final = "$aws/rules/"
SHARED_PREFIX: Final = "$share/"
INGEST_RULE: Final = "iotfleet_ingest"  # the local cloud's rule that feeds the ingest pipeline

# MQTT5 user properties a device puts on every outbox publish; the ingest service reads them.
MESSAGE_ID_PROPERTY: Final = "iotfleet-msg-id"  # unique per message: ingest dedupes on it
SEQUENCE_PROPERTY: Final = "iotfleet-seq"  # per-device sequence: loss, duplicates and reordering
SENT_AT_PROPERTY: Final = "iotfleet-sent-at"  # epoch milliseconds of the first send: end-to-end latency

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_SHADOW_NAME = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RULE_NAME = re.compile(r"[a-zA-Z0-9_]{1,128}")

# Topics a device may publish to under "$aws/" (IOT_CORE.md sections 1-3). Anything else that starts
# with "$" is reserved for AWS and refused before it reaches a broker that would disconnect us.
_RESERVED_PUBLISH = (
    re.compile(r"\$aws/things/[a-zA-Z0-9:_-]{1,128}/shadow(/name/[$a-zA-Z0-9:_-]{1,64})?/(get|update|delete)"),
    re.compile(r"\$aws/certificates/(create|create-from-csr)/(json|cbor)"),
    re.compile(r"\$aws/provisioning-templates/[^/]+/provision/(json|cbor)"),
    re.compile(r"\$aws/rules/[a-zA-Z0-9_]{1,128}/.+"),
    re.compile(r"\$aws/things/[a-zA-Z0-9:_-]{1,128}/jobs/(get|start-next|(\$next|[a-zA-Z0-9_-]{1,64})/(get|update))"),
)


def _fail(rule: str, value: str, message: str) -> TopicError:
    return TopicError(message, rule=rule, value=value)


def _match(pattern: re.Pattern[str], value: str, rule: str, what: str, allowed: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(rule, str(value), f"invalid {what} {value!r}: use {allowed}")
    return value


def validate_thing_name(name: str) -> str:
    """Return ``name`` if it is a valid thing name, else raise :class:`TopicError` (rule ``thing-name``)."""
    return _match(_THING_NAME, name, "thing-name", "thing name", "1-128 characters from a-z A-Z 0-9 : _ -")


def validate_shadow_name(name: str) -> str:
    """Return ``name`` if it is a valid named-shadow name (``[$a-zA-Z0-9:_-]{1,64}``)."""
    return _match(_SHADOW_NAME, name, "shadow-name", "shadow name", "1-64 characters from a-z A-Z 0-9 $ : _ -")


def validate_id(kind: str, value: str) -> str:
    """Return ``value`` if it can stand as one topic level for ``kind`` (tenant, site, stream, ...).

    Ids are 1-64 characters from ``A-Z a-z 0-9 _ . : -``, so they cannot add a level (``/``), widen a
    filter (``+``, ``#``), open a reserved topic (``$``) or inject a policy variable (``${...}``).
    """
    allowed = "1-64 characters from A-Z a-z 0-9 _ . : - (no '/', '+', '#', '$' or spaces)"
    return _match(_ID, value, f"{kind}-id", f"{kind} id", allowed)


def slash_count(topic: str) -> int:
    """Slashes that count against IoT Core's limit: the Basic Ingest ``$aws/rules/<rule>/`` is free."""
    if topic.startswith(BASIC_INGEST_PREFIX):
        parts = topic.split("/", 3)
        return topic.count("/") - min(3, len(parts) - 1)
    return topic.count("/")


def _check_common(topic: str, what: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise _fail("empty", str(topic), f"{what} must be a non-empty string")
    if "\x00" in topic:
        raise _fail("nul", topic, f"{what} {topic!r} contains U+0000, which MQTT forbids")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _fail("utf-8", topic, f"{what} {topic!r} is not valid UTF-8 (lone surrogate)") from exc
    if size > MAX_TOPIC_BYTES:
        raise _fail(
            "max-bytes",
            topic,
            f"{what} is {size} bytes; IoT Core allows at most {MAX_TOPIC_BYTES}: shorten its levels",
        )
    slashes = slash_count(topic)
    if slashes > MAX_TOPIC_SLASHES:
        raise _fail(
            "max-slashes",
            topic,
            f"{what} {topic!r} has {slashes} slashes; IoT Core allows at most {MAX_TOPIC_SLASHES} "
            "(8 levels; the $aws/rules/<rule>/ prefix is not counted)",
        )


def validate_rule_name(name: str) -> str:
    """Return ``name`` if it is a valid AWS IoT rule name (``[a-zA-Z0-9_]``, 1-128), else raise TopicError."""
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise _fail("rule", str(name), f"rule name {name!r} must be 1-128 characters of letters, digits and _")
    return name


def basic_ingest_topic(rule: str, topic: str) -> str:
    """``topic`` sent straight to rule ``rule`` (Basic Ingest: no broker fan-out, no messaging charge)."""
    return validate_topic(f"{BASIC_INGEST_PREFIX}{validate_rule_name(rule)}/{topic}")


def split_basic_ingest(topic: str) -> tuple[str, str] | None:
    """``(rule, topic)`` of a Basic Ingest topic (what the rule sees as its topic), or None."""
    if not topic.startswith(BASIC_INGEST_PREFIX):
        return None
    rule, _, rest = topic[len(BASIC_INGEST_PREFIX) :].partition("/")
    return (rule, rest) if rule and rest else None


def validate_topic(topic: str) -> str:
    """Return ``topic`` if a device may publish to it on IoT Core, else raise :class:`TopicError`."""
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise _fail("wildcard", topic, f"topic {topic!r} contains a wildcard: publish to a concrete topic")
    if topic.startswith("$"):
        if topic.startswith(BASIC_INGEST_PREFIX):
            rule = topic[len(BASIC_INGEST_PREFIX) :].split("/", 1)
            if not _RULE_NAME.fullmatch(rule[0]) or len(rule) < 2 or not rule[1]:
                raise _fail(
                    "basic-ingest",
                    topic,
                    f"Basic Ingest topic {topic!r} must be $aws/rules/<rule name [a-zA-Z0-9_]>/<topic>",
                )
        elif not any(p.fullmatch(topic) for p in _RESERVED_PUBLISH):
            raise _fail(
                "reserved",
                topic,
                f"topic {topic!r} starts with '$', which is reserved for AWS: only the documented "
                "shadow, jobs, fleet-provisioning and $aws/rules/ topics may be published",
            )
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if a device may subscribe to it, else raise :class:`TopicError`.

    ``+`` must fill a whole level, ``#`` must be the whole last level; ``$share/<group>/<filter>``
    shared subscriptions are accepted; Basic Ingest topics cannot be subscribed to.
    """
    inner = topic_filter
    if isinstance(topic_filter, str) and topic_filter.startswith(SHARED_PREFIX):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or any(c in parts[1] for c in "+#") or len(parts[1]) > 128:
            raise _fail(
                "shared",
                topic_filter,
                f"shared subscription {topic_filter!r} must be $share/<group>/<filter>, "
                "the group 1-128 characters without '+', '#' or '/'",
            )
        inner = parts[2]
    _check_common(inner, "topic filter")
    levels = inner.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise _fail("hash-position", topic_filter, f"'#' must be the whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise _fail("plus-position", topic_filter, f"'+' must be a whole level in {topic_filter!r}")
    if inner.startswith(BASIC_INGEST_PREFIX):
        raise _fail("basic-ingest", topic_filter, "Basic Ingest topics ($aws/rules/...) cannot be subscribed to")
    if inner.startswith("$") and not inner.startswith("$aws/"):
        raise _fail("reserved", topic_filter, f"topic filter {topic_filter!r} starts with '$', reserved for AWS")
    return topic_filter


def filter_matches(topic_filter: str, topic: str, *, hash_matches_parent: bool = False) -> bool:
    """Whether ``topic`` matches ``topic_filter`` with MQTT's ``+`` and ``#`` wildcards.

    IoT Core's ``#`` does not match the parent level (``sensor/#`` matches ``sensor/`` but not
    ``sensor``); MQTT 3.1.1/5 say it does: pass ``hash_matches_parent=True`` for the MQTT behaviour.
    As MQTT requires, a filter starting with a wildcard does not match topics starting with ``$``.
    ``$share/<group>/`` is stripped from the filter.
    """
    if topic_filter.startswith(SHARED_PREFIX):
        topic_filter = topic_filter.split("/", 2)[2]
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return hash_matches_parent or i < len(t_levels)
        if i >= len(t_levels):
            return False
        if f not in ("+", t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


# --------------------------------------------------------------------------- scoped topics


@dataclass(frozen=True, slots=True)
class ThingScope:
    """Where a thing sits in the fleet: its tenant and site, and its thing name."""

    tenant: str
    site: str
    thing: str

    def __post_init__(self) -> None:
        validate_id("tenant", self.tenant)
        validate_id("site", self.site)
        validate_thing_name(self.thing)


_DATA_FIELDS: Final = frozenset({"tenant", "site", "thing", "stream"})
_COMMAND_FIELDS: Final = frozenset({"tenant", "site", "thing", "command"})


@functools.lru_cache(maxsize=64)  # parsing a topic (ingest's hot path) reuses its template's levels
def _template_levels(template: str, allowed: frozenset[str], last: str) -> tuple[str | None, ...]:
    """Split a topic template into levels: a field name, or ``None`` for a literal level."""
    fields: list[str | None] = []
    for level in template.split("/"):
        parsed = list(string.Formatter().parse(level))
        names = [name for _, name, _, _ in parsed if name is not None]
        if not names:
            try:
                validate_id("template level", level)
            except TopicError as exc:
                raise ValueError(f"{template!r}: {exc.message}") from exc
            fields.append(None)
            continue
        if len(parsed) != 1 or parsed[0][0] or parsed[0][2] or parsed[0][3]:
            raise ValueError(f"{{{names[0]}}} must fill a whole level of {template!r}, with no format spec")
        if names[0] not in allowed:
            raise ValueError(f"unknown field {{{names[0]}}} in {template!r}; use {sorted(allowed)}")
        fields.append(names[0])
    present = [f for f in fields if f is not None]
    if len(set(present)) != len(present):
        raise ValueError(f"a field appears twice in {template!r}")
    missing = sorted({"tenant", "site", "thing"} - set(present))
    if missing:
        raise ValueError(
            f"{template!r} lacks {', '.join('{' + m + '}' for m in missing)}: every topic is scoped "
            "to a tenant, a site and a thing"
        )
    if fields[-1] != last:
        raise ValueError(f"{template!r} must end with {{{last}}}")
    return tuple(fields)


class TopicScheme(FrozenModel):
    """Tenant/site/thing scoped topic names for device data and commands.

    Each template is a ``/``-separated list of levels; a level is either a literal id or exactly one
    field: ``{tenant}``, ``{site}``, ``{thing}`` and ``{stream}`` (data, last level) or ``{command}``
    (commands, last level). The same scheme renders the AWS IoT policy and the local broker's ACL
    (:mod:`iotfleet.policy`), so what is tested locally is what is deployed.
    """

    data: str = "dt/{tenant}/{site}/{thing}/{stream}"
    command: str = "cmd/{tenant}/{site}/{thing}/{command}"

    @field_validator("data")
    @classmethod
    def _check_data(cls, value: str) -> str:
        _template_levels(value, _DATA_FIELDS, "stream")
        return value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str) -> str:
        _template_levels(value, _COMMAND_FIELDS, "command")
        return value

    def data_topic(self, scope: ThingScope, stream: str) -> str:
        """The topic ``scope``'s thing publishes ``stream`` to."""
        return validate_topic(self.data.format(**_fields(scope), stream=validate_id("stream", stream)))

    def command_topic(self, scope: ThingScope, command: str) -> str:
        """The topic ``command`` is sent to ``scope``'s thing on."""
        return validate_topic(self.command.format(**_fields(scope), command=validate_id("command", command)))

    def data_filter(self, scope: ThingScope | None = None) -> str:
        """A filter for every stream of one thing, or of every thing when ``scope`` is None."""
        return self.render_data(**(_fields(scope) if scope else _WILDCARDS), stream="+")

    def command_filter(self, scope: ThingScope | None = None) -> str:
        """A filter for every command of one thing, or of every thing when ``scope`` is None."""
        return self.render_command(**(_fields(scope) if scope else _WILDCARDS), command="+")

    def render_data(self, *, tenant: str, site: str, thing: str, stream: str) -> str:
        """The data template with raw substitutions (wildcards or policy variables); not validated."""
        return self.data.format(tenant=tenant, site=site, thing=thing, stream=stream)

    def render_command(self, *, tenant: str, site: str, thing: str, command: str) -> str:
        """The command template with raw substitutions (wildcards or policy variables); not validated."""
        return self.command.format(tenant=tenant, site=site, thing=thing, command=command)

    def parse_data_topic(self, topic: str) -> tuple[ThingScope, str] | None:
        """Split a data topic into its scope and stream, or None if it is not one of this scheme's."""
        return _parse(self.data, _DATA_FIELDS, "stream", topic)

    def parse_command_topic(self, topic: str) -> tuple[ThingScope, str] | None:
        """Split a command topic into its scope and command, or None if it is not one of this scheme's."""
        return _parse(self.command, _COMMAND_FIELDS, "command", topic)


_WILDCARDS: Final = {"tenant": "+", "site": "+", "thing": "+"}


def _fields(scope: ThingScope) -> dict[str, str]:
    return {"tenant": scope.tenant, "site": scope.site, "thing": scope.thing}


def _parse(template: str, allowed: frozenset[str], last: str, topic: str) -> tuple[ThingScope, str] | None:
    fields = _template_levels(template, allowed, last)
    t_levels = topic.split("/")
    if len(t_levels) != len(fields):
        return None
    values: dict[str, str] = {}
    for field, literal, level in zip(fields, template.split("/"), t_levels, strict=True):
        if field is None:
            if level != literal:
                return None
        else:
            values[field] = level
    try:
        scope = ThingScope(values["tenant"], values["site"], values["thing"])
        return scope, validate_id(last, values[last])
    except TopicError:
        return None


# --------------------------------------------------------------------------- reserved topics


class ShadowOp(StrEnum):
    """The three operations of the Device Shadow MQTT API."""

    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


def shadow_topic_prefix(thing: str, name: str | None = None) -> str:
    """``$aws/things/<thing>/shadow`` or ``.../shadow/name/<name>``, unvalidated (for policy variables)."""
    base = f"$aws/things/{thing}/shadow"
    return base if name is None else f"{base}/name/{name}"


@dataclass(frozen=True, slots=True)
class ShadowTopics:
    """The reserved topics of one classic (``name=None``) or named shadow of a thing."""

    thing: str
    name: str | None = None

    def __post_init__(self) -> None:
        validate_thing_name(self.thing)
        if self.name is not None:
            validate_shadow_name(self.name)

    @property
    def prefix(self) -> str:
        return shadow_topic_prefix(self.thing, self.name)

    def request(self, op: ShadowOp) -> str:
        return f"{self.prefix}/{op}"

    def accepted(self, op: ShadowOp) -> str:
        return f"{self.prefix}/{op}/accepted"

    def rejected(self, op: ShadowOp) -> str:
        return f"{self.prefix}/{op}/rejected"

    @property
    def delta(self) -> str:
        return f"{self.prefix}/update/delta"

    @property
    def documents(self) -> str:
        return f"{self.prefix}/update/documents"


def jobs_topic_prefix(thing: str) -> str:
    """``$aws/things/<thing>/jobs``, unvalidated (for policy variables)."""
    return f"$aws/things/{thing}/jobs"


@dataclass(frozen=True, slots=True)
class JobsTopics:
    """The reserved topics of a thing's jobs (IOT_CORE.md section 10): requests ``get``, ``start-next``,
    ``<jobId>/get`` and ``<jobId>/update``, each answered on ``/accepted`` or ``/rejected``, and the
    events ``notify`` and ``notify-next``."""

    thing: str

    def __post_init__(self) -> None:
        validate_thing_name(self.thing)

    @property
    def prefix(self) -> str:
        return jobs_topic_prefix(self.thing)

    def request(self, op: str, job_id: str | None = None) -> str:
        """``op`` is get, start-next or update; with ``job_id`` (``$next`` for the next one) the
        execution's get or update."""
        return f"{self.prefix}/{op}" if job_id is None else f"{self.prefix}/{job_id}/{op}"

    @property
    def notify(self) -> str:
        return f"{self.prefix}/notify"

    @property
    def notify_next(self) -> str:
        return f"{self.prefix}/notify-next"


class PayloadFormat(StrEnum):
    """Fleet-provisioning payload encodings named in the topic."""

    JSON = "json"
    CBOR = "cbor"


def create_keys_and_certificate_topic(fmt: PayloadFormat = PayloadFormat.JSON) -> str:
    """``$aws/certificates/create/<fmt>``; add ``/accepted`` or ``/rejected`` for the responses."""
    return f"$aws/certificates/create/{fmt}"


def create_certificate_from_csr_topic(fmt: PayloadFormat = PayloadFormat.JSON) -> str:
    """``$aws/certificates/create-from-csr/<fmt>``; add ``/accepted`` or ``/rejected`` for the responses."""
    return f"$aws/certificates/create-from-csr/{fmt}"


def register_thing_topic(template: str, fmt: PayloadFormat = PayloadFormat.JSON) -> str:
    """``$aws/provisioning-templates/<template>/provision/<fmt>``; add ``/accepted`` or ``/rejected``."""
    validate_id("template", template)
    return f"$aws/provisioning-templates/{template}/provision/{fmt}"
