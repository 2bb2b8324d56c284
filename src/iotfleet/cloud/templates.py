"""Fleet-provisioning templates: AWS's template JSON, evaluated for one RegisterThing request.

A template body has AWS's shape (IOT_CORE.md section 1, DG ``provision-template``): ``Parameters``
(``{"Name": {"Type": "String", "Default": ...}}``), ``Mappings``, ``Resources`` (one
``AWS::IoT::Thing``, one ``AWS::IoT::Certificate`` whose ``CertificateId`` is
``{"Ref": "AWS::IoT::Certificate::Id"}``, and ``AWS::IoT::Policy`` by ``PolicyName`` or
``PolicyDocument``) and ``DeviceConfiguration``. Values may use ``Ref``, ``Fn::Join``, ``Fn::Select``,
``Fn::Split``, ``Fn::Sub`` and ``Fn::FindInMap``. Evaluation is pure: :meth:`ProvisioningTemplate.plan`
turns parameters into a :class:`ProvisioningPlan`, or raises :class:`~iotfleet.errors.ProvisioningRejected`
naming the parameter or value at fault. Not supported (rejected when the template is defined, so nothing
half-works): ``Conditions``, thing types, groups and billing groups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from iotfleet.errors import ConfigError, ProvisioningRejected, TopicError
from iotfleet.topics import validate_thing_name

__all__ = [
    "CERTIFICATE_ID",
    "PreProvisioningHook",
    "ProvisioningPlan",
    "ProvisioningTemplate",
    "default_template_body",
]

CERTIFICATE_ID: Final = "AWS::IoT::Certificate::Id"
STEP: Final = "RegisterThing"
PreProvisioningHook = Callable[[dict[str, Any]], Mapping[str, Any]]
"""Called with AWS's hook input ``{claimCertificateId, certificateId, certificatePem, templateArn, clientId,
parameters}``; returns ``{"allowProvisioning": bool, "parameterOverrides": {...}}`` within the timeout."""

_TOP_LEVEL = {"Parameters", "Resources", "Mappings", "DeviceConfiguration"}
_THING_PROPERTIES = {"ThingName", "AttributePayload"}
_SUB = re.compile(r"\$\{([^}]+)\}")


class Override(StrEnum):
    """What RegisterThing does with a thing that already exists (AWS ``OverrideSettings`` values)."""

    DO_NOTHING = "DO_NOTHING"
    REPLACE = "REPLACE"
    MERGE = "MERGE"
    FAIL = "FAIL"


def _invalid(message: str) -> ProvisioningRejected:
    return ProvisioningRejected(STEP, 400, "InvalidParameters", message)


def default_template_body(policy_name: str) -> dict[str, Any]:
    """The ``iotfleet-default`` template: thing = ``SerialNumber``, attributes ``tenant`` and ``site``.

    A second RegisterThing for a serial that already exists fails (``OverrideSettings: FAIL``): with a
    shared claim, anyone could otherwise attach a new certificate to someone else's thing.
    """
    return {
        "Parameters": {
            "Tenant": {"Type": "String"},
            "Site": {"Type": "String"},
            "SerialNumber": {"Type": "String"},
            CERTIFICATE_ID: {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "OverrideSettings": {"AttributePayload": "FAIL"},
                "Properties": {
                    "ThingName": {"Ref": "SerialNumber"},
                    "AttributePayload": {"tenant": {"Ref": "Tenant"}, "site": {"Ref": "Site"}},
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": {"Ref": CERTIFICATE_ID}, "Status": "ACTIVE"},
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy_name}},
        },
        "DeviceConfiguration": {},
    }


@dataclass(frozen=True, slots=True)
class ProvisioningPlan:
    """What one RegisterThing will record: the thing, its attributes, policy and certificate status."""

    thing_name: str
    attributes: dict[str, str]
    override: Override
    certificate_status: str
    policy_name: str | None
    policy_document: dict[str, Any] | None
    device_configuration: dict[str, str]


@dataclass(frozen=True)
class ProvisioningTemplate:
    """A named template (AWS's JSON ``body``) with an optional pre-provisioning hook.

    ``hook`` is a Python callable standing in for AWS's Lambda; it gets ``hook_timeout`` seconds (AWS: 5).
    """

    name: str
    body: Mapping[str, Any]
    hook: PreProvisioningHook | None = None
    hook_timeout: float = 5.0
    enabled: bool = True
    _resources: dict[str, dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            validate_thing_name(self.name)  # template names follow the same pattern, [a-zA-Z0-9:_-]+
        except TopicError as exc:
            raise ConfigError(f"template name {self.name!r} is not valid: {exc}") from None
        unknown = set(self.body) - _TOP_LEVEL
        if unknown:
            raise ConfigError(
                f"template {self.name}: section(s) {sorted(unknown)} are not supported; use {sorted(_TOP_LEVEL)}"
            )
        by_type: dict[str, dict[str, Any]] = {}
        for logical, resource in dict(self.body.get("Resources", {})).items():
            kind = resource.get("Type")
            if kind not in ("AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy"):
                raise ConfigError(f"template {self.name}: resource {logical!r} has unsupported Type {kind!r}")
            if kind in by_type:
                raise ConfigError(f"template {self.name}: more than one {kind} resource")
            by_type[kind] = resource
        thing = by_type.get("AWS::IoT::Thing")
        if thing is None or by_type.get("AWS::IoT::Certificate") is None:
            raise ConfigError(f"template {self.name}: needs an AWS::IoT::Thing and an AWS::IoT::Certificate resource")
        extra = set(thing.get("Properties", {})) - _THING_PROPERTIES
        if extra:
            raise ConfigError(f"template {self.name}: thing properties {sorted(extra)} are not supported")
        cert_id = by_type["AWS::IoT::Certificate"].get("Properties", {}).get("CertificateId")
        if cert_id != {"Ref": CERTIFICATE_ID}:
            raise ConfigError(
                f"template {self.name}: fleet provisioning needs CertificateId {{'Ref': '{CERTIFICATE_ID}'}}"
            )
        for setting in thing.get("OverrideSettings", {}).values():
            Override(setting)
        object.__setattr__(self, "_resources", by_type)

    @classmethod
    def from_file(cls, path: Path) -> ProvisioningTemplate:
        """A template from a JSON file: AWS's template body (named after the file), or the shape of a
        CreateProvisioningTemplate request or DescribeProvisioningTemplate answer (``templateName``,
        ``templateBody`` as a JSON string or an object, ``enabled``), as ``aws iot`` prints and takes it."""
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"template file {path}: cannot read it: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"template file {path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"template file {path}: must hold a JSON object (a template body, or templateBody)")
        name, enabled, body = path.stem, True, data
        if "templateBody" in data:
            name, enabled, body = data.get("templateName", name), data.get("enabled", True), data["templateBody"]
            if isinstance(body, str):
                try:
                    body = json.loads(body)
                except ValueError as exc:
                    raise ConfigError(f"template file {path}: templateBody is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(name, str) or not isinstance(enabled, bool):
            raise ConfigError(
                f"template file {path}: templateBody must be an object, templateName a string, enabled true or false"
            )
        try:
            return cls(name, body, enabled=enabled)
        except ConfigError as exc:
            raise ConfigError(f"template file {path}: {exc.message}") from exc

    @property
    def arn(self) -> str:
        return f"arn:aws:iot:local:000000000000:provisioningtemplate/{self.name}"

    def parameters(self, given: Mapping[str, Any], certificate_id: str) -> dict[str, str]:
        """Resolve the request's parameters against the template's: defaults filled, missing ones named."""
        if not isinstance(given, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in given.items()
        ):
            raise _invalid("parameters must be an object of string keys to string values")
        declared: Mapping[str, Any] = self.body.get("Parameters", {})
        resolved = {CERTIFICATE_ID: certificate_id}
        for name, spec in declared.items():
            if name == CERTIFICATE_ID:
                continue
            if name in given:
                resolved[name] = given[name]
            elif isinstance(spec, Mapping) and "Default" in spec:
                resolved[name] = str(spec["Default"])
            else:
                raise _invalid(f"Parameter {name} is required by template {self.name} and has no default")
        return resolved

    def plan(self, parameters: Mapping[str, str], policies: Mapping[str, dict[str, Any]]) -> ProvisioningPlan:
        """Evaluate the resources for resolved ``parameters``; ``policies`` are those the cloud knows by name."""
        thing = self._resources["AWS::IoT::Thing"]
        props = thing.get("Properties", {})
        name = self._string(props.get("ThingName"), parameters, "ThingName")
        try:
            validate_thing_name(name)
        except TopicError as exc:
            raise _invalid(f"ThingName {name!r} is not a valid thing name: {exc}") from None
        attributes = {
            key: self._string(value, parameters, f"AttributePayload.{key}")
            for key, value in dict(props.get("AttributePayload", {})).items()
        }
        settings = {Override(v) for v in thing.get("OverrideSettings", {}).values()}
        override = next(
            (o for o in (Override.FAIL, Override.REPLACE, Override.MERGE) if o in settings), Override.DO_NOTHING
        )
        cert_props = self._resources["AWS::IoT::Certificate"].get("Properties", {})
        status = self._string(cert_props.get("Status", "ACTIVE"), parameters, "Status").upper()
        if status not in ("ACTIVE", "INACTIVE"):
            raise _invalid(f"certificate Status must be ACTIVE or INACTIVE, not {status!r}")
        policy_name, document = None, None
        policy = self._resources.get("AWS::IoT::Policy")
        if policy is not None:
            policy_props = policy.get("Properties", {})
            if "PolicyDocument" in policy_props:
                raw = self._value(policy_props["PolicyDocument"], parameters, "PolicyDocument")
                document = json.loads(raw) if isinstance(raw, str) else raw
                policy_name = f"{self.name}-{name}"
            else:
                policy_name = self._string(policy_props.get("PolicyName"), parameters, "PolicyName")
                if policy_name not in policies:
                    raise ProvisioningRejected(
                        STEP, 400, "InvalidParameters", f"policy {policy_name!r} named by the template does not exist"
                    )
                document = policies[policy_name]
        configuration = {
            key: self._string(value, parameters, f"DeviceConfiguration.{key}")
            for key, value in dict(self.body.get("DeviceConfiguration", {})).items()
        }
        return ProvisioningPlan(name, attributes, override, status, policy_name, document, configuration)

    # ---------------------------------------------------------------- intrinsic functions

    def _string(self, node: Any, parameters: Mapping[str, str], where: str) -> str:
        value = self._value(node, parameters, where)
        if not isinstance(value, str):
            raise _invalid(f"{where} evaluates to {type(value).__name__}, expected a string")
        return value

    def _value(self, node: Any, parameters: Mapping[str, str], where: str) -> Any:  # noqa: PLR0911 - one per function
        """Evaluate one template value; lists and plain objects are evaluated element by element."""
        if isinstance(node, list):
            return [self._value(item, parameters, where) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1 or not (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::")):
            return {key: self._value(value, parameters, f"{where}.{key}") for key, value in node.items()}
        ((function, argument),) = node.items()
        if function == "Ref":
            if argument not in parameters:
                raise _invalid(f"{where} refers to {argument!r}, which is not a parameter of template {self.name}")
            return parameters[argument]
        args = self._value(argument, parameters, where)
        if function == "Fn::Join" and isinstance(args, list) and len(args) == 2:
            return str(args[0]).join(str(part) for part in args[1])
        if function == "Fn::Split" and isinstance(args, list) and len(args) == 2:
            return str(args[1]).split(str(args[0]))
        if function == "Fn::Select" and isinstance(args, list) and len(args) == 2:
            index, items = int(args[0]), args[1]
            if not 0 <= index < len(items):
                raise _invalid(f"{where}: Fn::Select index {index} is outside a list of {len(items)}")
            return items[index]
        if function == "Fn::Sub":
            text, extra = (args, {}) if isinstance(args, str) else (args[0], args[1])
            scope = {**parameters, **extra}
            return _SUB.sub(lambda m: self._sub(m.group(1), scope, where), text)
        if function == "Fn::FindInMap" and isinstance(args, list) and len(args) == 3:
            try:
                return self.body["Mappings"][args[0]][args[1]][args[2]]
            except (KeyError, TypeError):
                raise _invalid(f"{where}: Fn::FindInMap found no {args} in the template's Mappings") from None
        raise ConfigError(f"template {self.name}: {where} uses {function} in an unsupported form")

    def _sub(self, name: str, scope: Mapping[str, str], where: str) -> str:
        if name not in scope:
            raise _invalid(f"{where}: Fn::Sub refers to {name!r}, which is not a parameter")
        return scope[name]
