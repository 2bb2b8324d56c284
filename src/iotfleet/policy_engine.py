"""AWS IoT policy documents: parsed and validated the way CreatePolicy does, and evaluated the way IoT Core
authorizes a connection's CONNECT, PUBLISH, SUBSCRIBE and deliveries.

This is the reference semantics (shared/IOT_CORE.md section 5, the IoT Developer Guide's policy pages):

- **Evaluation** is IAM's: every statement of every policy attached to the principal is considered; an
  applicable ``Deny`` wins over any ``Allow``; nothing allowed means denied (:class:`Decision`).
- **Actions** match case-insensitively, with ``*`` and ``?`` wildcards (``iot:*``, ``iot:Pub*``);
  ``NotAction`` applies a statement to every action it does not match.
- **Resources** are ARNs matched with ``*`` (any run of characters, including ``/`` and none) and ``?``
  (exactly one character). ``+`` and ``#`` are literal characters, so ``topicfilter/a/+`` allows exactly
  the filter ``a/+``. ``${*}``, ``${?}`` and ``${$}`` are the literal ``*``, ``?`` and ``$``.
  ``NotResource`` applies a statement to every resource it does not match.
- **Policy variables** (``${iot:ClientId}``, ``${iot:Connection.Thing.ThingName}``,
  ``${iot:Connection.Thing.Attributes[name]}``, ``${iot:Connection.Thing.ThingTypeName}``,
  ``${iot:Certificate.*}``) are substituted as literal text (a client id ``+`` or ``a*b`` is no wildcard
  here: it only matches itself). A variable that does not resolve (a thing variable for a client id that
  is not a thing attached to the certificate, an unknown name, a certificate value holding one of
  ``* $ + ? #``) makes that resource or condition value match nothing, in an Allow and a Deny alike.
  Variables are substituted only in ``"Version": "2012-10-17"`` documents, as in IAM.
- **Conditions**: ``String{Not}Equals{IgnoreCase}``, ``String{Not}Like``, ``Bool``, ``Arn{Not}Equals``,
  ``Arn{Not}Like``, ``{Not}IpAddress`` and ``Null``, each with the ``ForAnyValue:`` / ``ForAllValues:``
  prefixes and the ``IfExists`` suffix. Keys: ``iot:Connection.Thing.IsAttached``, ``iot:ClientId``,
  ``aws:SourceIp``, the thing and certificate variables (``iot:Certificate.*.List`` for multi-valued ones).
  A key the request does not have fails a positive operator and satisfies a negated one (IAM's rule).

Anything CreatePolicy would refuse (bad JSON, a document over 2048 characters not counting whitespace,
a statement without Effect, Action or Resource, an unknown key or condition operator) raises
:class:`~iotfleet.errors.PolicyError` naming every problem, so no rule is silently ignored.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final

from iotfleet.errors import PolicyError

__all__ = [
    "MAX_POLICY_CHARS",
    "Decision",
    "Effect",
    "PolicyDocument",
    "RequestContext",
    "Statement",
    "authorize",
]

MAX_POLICY_CHARS: Final = 2048  # CreatePolicy: 1 to 2048 characters, not counting whitespace
VERSIONS: Final = ("2012-10-17", "2008-10-17")
MAX_VALUE_CHARS: Final = 1024  # a certificate value longer than this is not substituted
_UNSUBSTITUTABLE: Final = frozenset("*$+?#")
_STATEMENT_KEYS: Final = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"})
_VARIABLE: Final = re.compile(r"\$\{([^}]*)\}")
_ESCAPES: Final = frozenset("*?$")  # ${*} ${?} ${$}: the character itself
_ATTRIBUTE: Final = re.compile(r"iot:Connection\.Thing\.Attributes\[(.+)\]")


class Decision(StrEnum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit-deny"
    IMPLICIT_DENY = "implicit-deny"

    @property
    def allowed(self) -> bool:
        return self is Decision.ALLOW


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a policy's variables and condition keys resolve to for one connection.

    ``thing_name`` is the connected thing: set only when the client id is the name of a thing attached to
    the connection's certificate (IoT Core's default, non-exclusive association). ``certificate`` maps a
    field under ``iot:Certificate.`` (``Subject.CommonName``, ``SerialNumber``, ...) to its value or values.
    """

    client_id: str
    thing_name: str | None = None
    thing_type: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    certificate: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    source_ip: str | None = None

    @property
    def is_attached(self) -> bool:
        return self.thing_name is not None

    def variable(self, name: str) -> str | None:
        """The value of ``${name}``, or None when it does not resolve."""
        if name == "iot:ClientId":
            return self.client_id
        if name == "aws:SourceIp":
            return self.source_ip
        if name.startswith("iot:Connection.Thing."):
            return self._thing(name)
        if name.startswith("iot:Certificate."):
            values = self._certificate(name.removeprefix("iot:Certificate."))
            return values[0] if values else None
        return None

    def _thing(self, name: str) -> str | None:
        if self.thing_name is None:
            return None
        if name == "iot:Connection.Thing.ThingName":
            return self.thing_name
        if name == "iot:Connection.Thing.ThingTypeName":
            return self.thing_type
        match = _ATTRIBUTE.fullmatch(name)
        return self.attributes.get(match.group(1)) if match else None

    def _certificate(self, path: str) -> list[str] | None:
        """A certificate field's substitutable values: ``X`` the first, ``X.1`` the second (IoT Core's
        numbering), ``X.List`` all of them (at most 5)."""
        index: int | None = 0
        if path.endswith(".List"):
            path, index = path.removesuffix(".List"), None
        elif (base := path.rpartition("."))[2].isdigit() and base[0] in self.certificate:
            path, index = base[0], int(base[2])
        raw = self.certificate.get(path)
        if raw is None:
            return None
        values = [raw] if isinstance(raw, str) else list(raw)[:5]
        usable = [v for v in values if len(v) <= MAX_VALUE_CHARS and not _UNSUBSTITUTABLE & set(v)]
        if index is None:
            return usable
        if index >= len(values) or values[index] not in usable:
            return None
        return [values[index]]

    def condition_values(self, key: str) -> list[str] | None:
        """The request's values for condition key ``key``, or None when the request has no such key."""
        if key == "iot:Connection.Thing.IsAttached":
            return ["true" if self.is_attached else "false"]
        if key.startswith("iot:Certificate.") and key.endswith(".List"):
            return self._certificate(key.removeprefix("iot:Certificate."))
        value = self.variable(key)
        return None if value is None else [value]


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class _Template:
    """A resource or condition value: literal text, ``*``/``?`` wildcards and policy variables; ``text`` is
    the value as written in the document."""

    text: str
    parts: tuple[tuple[str, str], ...]  # ("text", s) | ("var", name) | ("star", "") | ("one", "")

    @classmethod
    def parse(cls, text: str, *, variables: bool) -> _Template:
        parts: list[tuple[str, str]] = []
        position = 0
        for match in _VARIABLE.finditer(text) if variables else ():
            parts.extend(_wild(text[position : match.start()]))
            name = match.group(1)
            parts.append(("text", name) if name in _ESCAPES else ("var", name))
            position = match.end()
        parts.extend(_wild(text[position:]))
        return cls(text, tuple(parts))

    def regex(
        self, context: RequestContext | None, *, wildcards: bool = True, ignore_case: bool = False
    ) -> re.Pattern[str] | None:
        """The pattern with ``context``'s values in place (literal), or None when a variable does not resolve."""
        out: list[str] = []
        for kind, value in self.parts:
            if kind == "var":
                resolved = None if context is None else context.variable(value)
                if resolved is None:
                    return None
                out.append(re.escape(resolved))
            elif kind == "text" or not wildcards:
                out.append(re.escape(value if kind == "text" else "*" if kind == "star" else "?"))
            else:
                out.append(".*" if kind == "star" else ".")
        return _compiled("".join(out), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _wild(text: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    literal = ""
    for ch in text:
        if ch in "*?":
            if literal:
                parts.append(("text", literal))
                literal = ""
            parts.append(("star" if ch == "*" else "one", ""))
        else:
            literal += ch
    if literal:
        parts.append(("text", literal))
    return parts


@lru_cache(maxsize=4096)
def _compiled(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


@lru_cache(maxsize=1024)
def _action_pattern(text: str) -> re.Pattern[str]:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text)
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


# --------------------------------------------------------------------------- conditions

_STRING_OPS: Final = {
    "StringEquals": (False, False, False),  # (negated, like, ignore case)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringNotEqualsIgnoreCase": (True, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
    "ArnEquals": (False, False, False),
    "ArnNotEquals": (True, False, False),
    "ArnLike": (False, True, False),
    "ArnNotLike": (True, True, False),
}
_OPERATORS: Final = frozenset({*_STRING_OPS, "Bool", "IpAddress", "NotIpAddress", "Null"})


@dataclass(frozen=True, slots=True)
class _Condition:
    operator: str  # without prefix and suffix
    quantifier: str  # "", "ForAnyValue", "ForAllValues"
    if_exists: bool
    key: str
    values: tuple[_Template, ...]
    raw: tuple[str, ...]

    @property
    def negated(self) -> bool:
        return self.operator == "NotIpAddress" or _STRING_OPS.get(self.operator, (False,))[0]

    def holds(self, context: RequestContext) -> bool:
        request = context.condition_values(self.key)
        if self.operator == "Null":  # a key with no value counts as absent
            return all((v.lower() == "true") != bool(request) for v in self.raw)
        if not request:
            # a missing key: ForAllValues holds vacuously, IfExists and negated operators hold, others fail
            return self.quantifier == "ForAllValues" or (not self.quantifier and (self.if_exists or self.negated))
        matches = [self._matches_any(value, context) for value in request]
        if self.quantifier == "ForAllValues":
            return all(m != self.negated for m in matches)
        if self.quantifier == "ForAnyValue":
            return any(m != self.negated for m in matches)
        return matches[0] != self.negated

    def _matches_any(self, value: str, context: RequestContext) -> bool:
        """Whether ``value`` matches one of the condition's values (before negation)."""
        if self.operator == "Bool":
            return any(value.lower() == v.lower() for v in self.raw)
        if self.operator in ("IpAddress", "NotIpAddress"):
            return _in_networks(value, self.raw)
        _, like, ignore_case = _STRING_OPS[self.operator]
        for template in self.values:
            pattern = template.regex(context, wildcards=like, ignore_case=ignore_case)
            if pattern is None:
                continue  # an unresolved variable matches nothing
            if pattern.fullmatch(value):
                return True
        return False


def _in_networks(value: str, networks: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


# --------------------------------------------------------------------------- documents


class Effect(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement, compiled: which actions and resources it covers (or excludes) and when."""

    effect: Effect
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[_Template, ...]
    not_resource: bool
    conditions: tuple[_Condition, ...]

    def applies(self, action: str, resource: str, context: RequestContext) -> bool:
        named = any(_action_pattern(a).fullmatch(action) for a in self.actions)
        if named == self.not_action:
            return False
        matched = False
        for template in self.resources:
            pattern = template.regex(context)
            if pattern is not None and pattern.fullmatch(resource):
                matched = True
                break
        if matched == self.not_resource:
            return False
        return all(condition.holds(context) for condition in self.conditions)


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A validated policy document; ``text`` is the JSON as given (what GetPolicy returns)."""

    text: str
    version: str | None
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, source: str | bytes | Mapping[str, Any], *, name: str = "policy") -> PolicyDocument:
        """Validate ``source`` as CreatePolicy does; raise :class:`PolicyError` listing every problem."""
        text = json.dumps(source) if isinstance(source, Mapping) else _text(source, name)
        problems: list[str] = []
        if not 1 <= len("".join(text.split())) <= MAX_POLICY_CHARS:
            chars = len("".join(text.split()))
            problems.append(f"it has {chars} characters without whitespace; IoT Core takes 1 to {MAX_POLICY_CHARS}")
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise PolicyError(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise PolicyError(f"{name} must be a JSON object with Version and Statement")
        for key in document:
            if key not in ("Version", "Statement", "Id"):
                problems.append(f"unknown key {key!r}: a policy has Version, Statement and Id")
        version = document.get("Version")
        if version is not None and version not in VERSIONS:
            problems.append(f"Version {version!r} is not one of {', '.join(VERSIONS)}")
        raw = document.get("Statement")
        listed = [raw] if isinstance(raw, dict) else raw if isinstance(raw, list) else None
        if not listed:
            problems.append("Statement must be a statement object or a non-empty list of them")
            listed = []
        statements = []
        for i, item in enumerate(listed):
            where = f"Statement[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where} is not an object")
                continue
            statement = _statement(item, where, variables=version == VERSIONS[0], problems=problems)
            if statement is not None:
                statements.append(statement)
        if problems:
            what = f"{name} is not a valid AWS IoT policy (MalformedPolicyException): "
            raise PolicyError(what + "; ".join(problems))
        return cls(text, version, tuple(statements))


def _text(source: str | bytes, name: str) -> str:
    if isinstance(source, bytes):
        try:
            return source.decode()
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{name} is not UTF-8 text: {exc}") from None
    return source


def _strings(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not items or not all(isinstance(v, str) and v for v in items):
        problems.append(f"{where} must be a non-empty string or list of non-empty strings")
        return ()
    return tuple(items)


def _statement(item: Mapping[str, Any], where: str, *, variables: bool, problems: list[str]) -> Statement | None:
    before = len(problems)
    for key in item:
        if key not in _STATEMENT_KEYS:
            hint = " (IoT policies name no Principal: they are attached to one)" if key == "Principal" else ""
            problems.append(f"{where}: unknown key {key!r}{hint}")
    effect = item.get("Effect")
    if effect not in ("Allow", "Deny"):
        problems.append(f"{where}: Effect must be Allow or Deny, not {effect!r}")
    if ("Action" in item) == ("NotAction" in item):
        problems.append(f"{where} needs exactly one of Action and NotAction")
    if ("Resource" in item) == ("NotResource" in item):
        problems.append(f"{where} needs exactly one of Resource and NotResource")
    action_key = "NotAction" if "NotAction" in item else "Action"
    resource_key = "NotResource" if "NotResource" in item else "Resource"
    actions = _strings(item.get(action_key), f"{where}.{action_key}", problems)
    for action in actions:
        if action != "*" and not re.fullmatch(r"[A-Za-z0-9-]+:[A-Za-z0-9*?]+", action):
            problems.append(f"{where}.{action_key}: {action!r} is not service:Action (e.g. iot:Publish) or *")
    resources = _strings(item.get(resource_key), f"{where}.{resource_key}", problems)
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            problems.append(f"{where}.{resource_key}: {resource!r} is not an ARN or *")
    conditions = _conditions(item.get("Condition", {}), f"{where}.Condition", variables, problems)
    if len(problems) > before:
        return None
    return Statement(
        Effect(str(effect)),
        actions,
        action_key == "NotAction",
        tuple(_Template.parse(r, variables=variables) for r in resources),
        resource_key == "NotResource",
        conditions,
    )


def _conditions(block: Any, where: str, variables: bool, problems: list[str]) -> tuple[_Condition, ...]:
    if not isinstance(block, dict):
        problems.append(f"{where} must be an object of operator: {{key: value}}")
        return ()
    out = []
    for full, checks in block.items():
        quantifier, _, rest = full.rpartition(":")
        operator = rest.removesuffix("IfExists")
        if quantifier not in ("", "ForAnyValue", "ForAllValues") or operator not in _OPERATORS:
            problems.append(f"{where}: condition operator {full!r} is not supported; use one of {sorted(_OPERATORS)}")
            continue
        if not isinstance(checks, dict) or not checks:
            problems.append(f"{where}.{full} must be an object of condition key: value(s)")
            continue
        for key, value in checks.items():
            items = [value] if isinstance(value, str | bool) else value if isinstance(value, list) else None
            if not items or not all(isinstance(v, str | bool) for v in items):
                problems.append(f"{where}.{full}.{key} must be a string or a list of strings")
                continue
            raw = tuple(str(v).lower() if isinstance(v, bool) else v for v in items)
            if operator in ("IpAddress", "NotIpAddress"):
                for network in raw:
                    try:
                        ipaddress.ip_network(network, strict=False)
                    except ValueError:
                        problems.append(f"{where}.{full}.{key}: {network!r} is not an IP address or CIDR block")
            templates = tuple(_Template.parse(v, variables=variables) for v in raw)
            out.append(_Condition(operator, quantifier, rest != operator, key, templates, raw))
    return tuple(out)


# --------------------------------------------------------------------------- authorization


def authorize(policies: Iterable[PolicyDocument], action: str, resource: str, context: RequestContext) -> Decision:
    """IoT Core's answer for ``action`` (``iot:Publish``, ...) on ``resource`` (an ARN) under ``policies``
    (every policy attached to the connection's principal)."""
    allowed = False
    for document in policies:
        for statement in document.statements:
            if statement.applies(action, resource, context):
                if statement.effect is Effect.DENY:
                    return Decision.EXPLICIT_DENY
                allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY
