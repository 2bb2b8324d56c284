"""AWS IoT policies rendered from a :class:`~iotfleet.topics.TopicScheme`, and evaluated locally.

:func:`render` gives the least-privilege device policy that is deployed to AWS IoT Core, written with
thing policy variables; the local cloud's brokers enforce that very document (the plugin's policy
engine), so the rules a test exercises on loopback are the rules that are deployed. :func:`evaluate`
applies a policy the way IoT Core does (:mod:`iotfleet.policy_engine`).

Policy grammar: shared/IOT_CORE.md section 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from iotfleet.policy_engine import PolicyDocument, RequestContext, authorize
from iotfleet.topics import (
    BASIC_INGEST_PREFIX,
    INGEST_RULE,
    ShadowOp,
    TopicScheme,
    create_certificate_from_csr_topic,
    create_keys_and_certificate_topic,
    jobs_topic_prefix,
    register_thing_topic,
    shadow_topic_prefix,
    validate_rule_name,
)

__all__ = [
    "THING_NAME",
    "ThingVariables",
    "evaluate",
    "render",
    "render_claim",
    "render_https",
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
    basic_ingest_rules: Sequence[str] = (INGEST_RULE,),
) -> Policy:
    """The least-privilege device policy for ``scheme``.

    A device may connect only as its own thing name (and only with a certificate attached to a thing),
    publish its own data streams (on their topics, and by Basic Ingest to ``basic_ingest_rules``) and its
    own shadow requests (classic and named; ``delete`` only when asked for) and jobs requests, and
    subscribe to and receive its own commands, shadow responses and jobs responses and events.
    Tenant and site come from the thing attributes
    ``tenant_attribute`` and ``site_attribute``.
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

    publish = _data_topics(scheme, scope, region, account, basic_ingest_rules)
    publish += [arn("topic", f"{shadow_prefix}/{op}") for op in ops]
    publish += [arn("topic", f"{shadow_prefix}/name/*/{op}") for op in ops]
    jobs_prefix = jobs_topic_prefix(THING_NAME)
    publish += [arn("topic", f"{jobs_prefix}/{request}") for request in ("get", "start-next", "*/get", "*/update")]
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
                "Resource": [
                    arn("topicfilter", commands),
                    arn("topicfilter", f"{shadow_prefix}/*"),
                    arn("topicfilter", f"{jobs_prefix}/*"),
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [
                    arn("topic", commands),
                    arn("topic", f"{shadow_prefix}/*"),
                    arn("topic", f"{jobs_prefix}/*"),
                ],
            },
        ],
    }


def render_https(
    scheme: TopicScheme,
    *,
    tenant: str,
    site: str,
    thing: str,
    region: str = "*",
    account: str = "*",
    basic_ingest_rules: Sequence[str] = (INGEST_RULE,),
) -> Policy:
    """The policy of a device that publishes over HTTPS only: ``iot:Publish`` on its own data streams
    (and by Basic Ingest to ``basic_ingest_rules``), named literally, and nothing else.

    HTTPS has no client id and no thing connection, so ``${iot:Connection.Thing.*}`` variables do not
    resolve there (IOT_CORE.md section 11(b)) and :func:`render`'s policy allows such a device nothing:
    it gets one of these per certificate instead. A provisioning template renders it with ``Fn::Sub``
    when ``tenant``, ``site`` and ``thing`` are ``${Tenant}``-style parameter references.
    """
    scope = {"tenant": tenant, "site": site, "thing": thing}
    publish = _data_topics(scheme, scope, region, account, basic_ingest_rules)
    return {"Version": VERSION, "Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": publish}]}


def _data_topics(
    scheme: TopicScheme, scope: dict[str, str], region: str, account: str, basic_ingest_rules: Sequence[str]
) -> list[str]:
    """The topic ARNs of ``scope``'s data streams, directly and by Basic Ingest to each rule."""
    data = scheme.render_data(**scope, stream="*")
    topics = [data, *(f"{BASIC_INGEST_PREFIX}{validate_rule_name(rule)}/{data}" for rule in basic_ingest_rules)]
    return [_arn("topic", region, account, topic) for topic in topics]


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

    def context(self) -> RequestContext:
        """The policy engine's view of this connection (thing variables resolve only when attached)."""
        return RequestContext(
            client_id=self.client_id if self.client_id is not None else self.thing_name,
            thing_name=self.thing_name if self.attached else None,
            attributes=self.attributes,
        )


def evaluate(policy: Policy, action: str, resource: str, variables: ThingVariables) -> bool:
    """Whether ``policy`` allows ``action`` on ``resource`` (an ARN) for a thing's connection: the policy
    engine's answer (:func:`iotfleet.policy_engine.authorize`), for documents this module renders."""
    document = PolicyDocument.parse(policy)
    return authorize([document], action, resource, variables.context()).allowed
