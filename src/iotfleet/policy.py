"""AWS IoT policies rendered from a :class:`~iotfleet.topics.TopicScheme`, and evaluated locally.

:func:`render` gives the least-privilege device policy that is deployed to AWS IoT Core, written with
thing policy variables. :func:`acl_lines` derives the local broker's ACL for one concrete thing from
that very document, so the rules a test exercises on loopback are the rules that are deployed.
:func:`evaluate` applies a policy the way IoT Core does (:mod:`iotfleet.policy_engine`), which tests use
to prove the two agree.

Policy grammar: shared/IOT_CORE.md section 5.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from iotfleet.errors import PolicyError
from iotfleet.policy_engine import PolicyDocument, RequestContext, authorize
from iotfleet.topics import (
    ShadowOp,
    TopicScheme,
    create_certificate_from_csr_topic,
    create_keys_and_certificate_topic,
    register_thing_topic,
    shadow_topic_prefix,
)

__all__ = [
    "THING_NAME",
    "ThingVariables",
    "acl_lines",
    "evaluate",
    "render",
    "render_claim",
    "thing_attribute",
]

THING_NAME: Final = "${iot:Connection.Thing.ThingName}"
IS_ATTACHED: Final = "iot:Connection.Thing.IsAttached"
VERSION: Final = "2012-10-17"

Policy = dict[str, Any]


def thing_attribute(name: str) -> str:
    """The policy variable of one thing attribute, e.g. ``${iot:Connection.Thing.Attributes[tenant]}``."""
    return f"${{iot:Connection.Thing.Attributes[{name}]}}"


def _arn(kind: str, region: str, account: str, rest: str) -> str:
    return f"arn:aws:iot:{region}:{account}:{kind}/{rest}"


def render(
    scheme: TopicScheme,
    *,
    region: str = "*",
    account: str = "*",
    tenant_attribute: str = "tenant",
    site_attribute: str = "site",
    allow_shadow_delete: bool = False,
) -> Policy:
    """The least-privilege device policy for ``scheme``.

    A device may connect only as its own thing name (and only with a certificate attached to a thing),
    publish its own data streams and its own shadow requests (classic and named; ``delete`` only when
    asked for), and subscribe to and receive its own commands and shadow responses. Tenant and site come
    from the thing attributes ``tenant_attribute`` and ``site_attribute``.
    """
    scope = {
        "tenant": thing_attribute(tenant_attribute),
        "site": thing_attribute(site_attribute),
        "thing": THING_NAME,
    }
    ops = [ShadowOp.GET, ShadowOp.UPDATE] + ([ShadowOp.DELETE] if allow_shadow_delete else [])
    shadow_prefix = shadow_topic_prefix(THING_NAME)

    def arn(kind: str, rest: str) -> str:
        return _arn(kind, region, account, rest)

    publish = [arn("topic", scheme.render_data(**scope, stream="*"))]
    publish += [arn("topic", f"{shadow_prefix}/{op}") for op in ops]
    publish += [arn("topic", f"{shadow_prefix}/name/*/{op}") for op in ops]
    commands = scheme.render_command(**scope, command="*")
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": arn("client", THING_NAME),
                "Condition": {"Bool": {IS_ATTACHED: "true"}},
            },
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": publish},
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [arn("topicfilter", commands), arn("topicfilter", f"{shadow_prefix}/*")],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [arn("topic", commands), arn("topic", f"{shadow_prefix}/*")],
            },
        ],
    }


def render_claim(
    template: str | Sequence[str],
    *,
    region: str = "*",
    account: str = "*",
    csr: bool = True,
    create_keys: bool = True,
) -> Policy:
    """The claim-certificate policy: fleet-provisioning topics for ``template`` (one or several) only (DG example)."""
    names = [template] if isinstance(template, str) else list(template)
    topics = [f"{register_thing_topic(name).rsplit('/', 1)[0]}/*" for name in names]
    if csr:
        topics.append(f"{create_certificate_from_csr_topic().rsplit('/', 1)[0]}/*")
    if create_keys:
        topics.append(f"{create_keys_and_certificate_topic().rsplit('/', 1)[0]}/*")
    return {
        "Version": VERSION,
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": _arn("client", region, account, "*")},
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [_arn("topic", region, account, t) for t in topics],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [_arn("topicfilter", region, account, t) for t in topics],
            },
        ],
    }


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class ThingVariables:
    """What the policy variables resolve to for one connection of a thing."""

    thing_name: str
    attributes: Mapping[str, str]
    client_id: str | None = None
    attached: bool = True

    def resolve(self, name: str) -> str | None:
        """The value of variable ``name`` (without ``${}``), or None when it does not resolve."""
        if name == "iot:Connection.Thing.ThingName":
            return self.thing_name
        if name == "iot:ClientId":
            return self.client_id if self.client_id is not None else self.thing_name
        match = re.fullmatch(r"iot:Connection\.Thing\.Attributes\[(.+)\]", name)
        if match:
            return self.attributes.get(match.group(1))
        return None

    def context(self) -> RequestContext:
        """The policy engine's view of this connection (thing variables resolve only when attached)."""
        return RequestContext(
            client_id=self.client_id if self.client_id is not None else self.thing_name,
            thing_name=self.thing_name if self.attached else None,
            attributes=self.attributes,
        )

    def condition(self, key: str) -> str | None:
        if key == IS_ATTACHED:
            return "true" if self.attached else "false"
        return None


_ESCAPES: Final = {"*": "\x00STAR", "?": "\x00QMARK", "$": "\x00DOLLAR"}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def _substitute(resource: str, variables: ThingVariables) -> str | None:
    """Resolve ``${...}`` in a resource; ``${*}``/``${?}``/``${$}`` become escaped literals."""
    unresolved = False

    def repl(match: re.Match[str]) -> str:
        nonlocal unresolved
        name = match.group(1)
        if name in _ESCAPES:
            return _ESCAPES[name]
        value = variables.resolve(name)
        if value is None or any(c in value for c in "*$+?#"):
            unresolved = True
            return ""
        return value

    out = _VARIABLE.sub(repl, resource)
    return None if unresolved else out


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _conditions_hold(conditions: Mapping[str, Any], variables: ThingVariables) -> bool:
    for operator, checks in conditions.items():
        if operator != "Bool":
            raise PolicyError(f"condition operator {operator!r} is not supported locally; use Bool")
        for key, expected in checks.items():
            if variables.condition(key) != str(expected).lower():
                return False
    return True


def evaluate(policy: Policy, action: str, resource: str, variables: ThingVariables) -> bool:
    """Whether ``policy`` allows ``action`` on ``resource`` (an ARN) for a thing's connection: the policy
    engine's answer (:func:`iotfleet.policy_engine.authorize`), for documents this module renders."""
    document = PolicyDocument.parse(policy)
    return authorize([document], action, resource, variables.context()).allowed


# --------------------------------------------------------------------------- broker ACL


_ACL_ACCESS: Final = {"iot:Publish": "write", "iot:Receive": "read"}


def _resource_to_filter(resource: str) -> str:
    """Turn a concrete ``topic/...`` resource into a mosquitto ACL filter.

    A whole middle level ``*`` becomes ``+`` (one level: narrower than the policy's ``*``, which also
    spans ``/``); a whole last level ``*`` becomes ``+/#``, one or more levels, because mosquitto's
    ``#`` alone would also match the parent level, which the policy's ``*`` does not. The ACL is
    therefore never broader than the policy. Partial-level wildcards have no broker equivalent and
    are refused rather than silently widened.
    """
    levels = resource.split("/")
    out: list[str] = []
    for i, level in enumerate(levels):
        if level == "*":
            out.append("+/#" if i == len(levels) - 1 else "+")
        elif "*" in level or "?" in level:
            raise PolicyError(
                f"resource level {level!r} of {resource!r} mixes a wildcard with text; the local broker "
                "cannot enforce it: use a whole-level '*'"
            )
        elif "+" in level or "#" in level:
            raise PolicyError(f"resource {resource!r} holds a literal '+' or '#', which the broker reads as a wildcard")
        else:
            out.append(level)
    return "/".join(out)


def acl_lines(policy: Policy, username: str, variables: ThingVariables) -> list[str]:
    """mosquitto ACL lines for one identity (``username``, the certificate CN) under ``policy``.

    Allow statements for ``iot:Publish`` become ``topic write`` lines and ``iot:Receive`` become
    ``topic read`` lines, with the thing's variables substituted. ``iot:Subscribe`` has no line:
    mosquitto 2.0's ACL file does not check SUBSCRIBE, only delivery (``read``), which is where a
    foreign subscription is stopped. A policy with Deny statements is refused (no ACL equivalent).
    """
    if "\n" in username or not username:
        raise PolicyError(f"username {username!r} cannot be written to an ACL file")
    lines = [f"user {username}"]
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow":
            raise PolicyError("Deny statements have no mosquitto ACL equivalent; express the policy with Allow only")
        if not _conditions_hold(statement.get("Condition", {}), variables):
            continue
        for action in _listed(statement.get("Action", [])):
            access = _ACL_ACCESS.get(action)
            if access is None:
                continue
            lines.extend(_acl_topics(access, _listed(statement.get("Resource", [])), variables))
    return lines


def _acl_topics(access: str, resources: Iterable[str], variables: ThingVariables) -> list[str]:
    lines = []
    for pattern in resources:
        concrete = _substitute(pattern, variables)
        if concrete is None:
            continue
        _, _, rest = concrete.partition(":topic/")
        if not rest:
            raise PolicyError(f"{pattern!r} is not a topic/ ARN")
        lines.append(f"topic {access} {_resource_to_filter(rest)}")
    return lines
