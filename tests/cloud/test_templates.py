"""Provisioning templates: AWS's template JSON evaluated without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotfleet.cloud.templates import CERTIFICATE_ID, Override, ProvisioningTemplate, default_template_body
from iotfleet.errors import ConfigError, ProvisioningRejected

POLICIES = {"iotfleet-device": {"Version": "2012-10-17", "Statement": []}}
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=40)


def template(**changes: Any) -> ProvisioningTemplate:
    return ProvisioningTemplate("t", {**default_template_body("iotfleet-device"), **changes})


@given(tenant=ids, site=ids, serial=ids)
def test_default_template_names_the_thing_after_the_serial(tenant: str, site: str, serial: str) -> None:
    t = template()
    params = t.parameters({"Tenant": tenant, "Site": site, "SerialNumber": serial}, "c" * 64)
    plan = t.plan(params, POLICIES)
    assert (plan.thing_name, plan.attributes) == (serial, {"tenant": tenant, "site": site})
    assert (plan.policy_name, plan.certificate_status, plan.override) == ("iotfleet-device", "ACTIVE", Override.FAIL)


def test_defaults_fill_missing_parameters_and_required_ones_are_named() -> None:
    body = default_template_body("iotfleet-device")
    body["Parameters"]["Site"] = {"Type": "String", "Default": "unassigned"}
    t = ProvisioningTemplate("t", body)
    assert t.parameters({"Tenant": "a", "SerialNumber": "s"}, "id")["Site"] == "unassigned"
    with pytest.raises(ProvisioningRejected, match="Parameter SerialNumber is required"):
        t.parameters({"Tenant": "a"}, "id")
    with pytest.raises(ProvisioningRejected, match="string keys to string values"):
        t.parameters({"Tenant": 1}, "id")


def test_intrinsic_functions() -> None:
    body = default_template_body("iotfleet-device")
    body["Mappings"] = {"Regions": {"acme": {"home": "eu-west-1"}}}
    body["Resources"]["thing"]["Properties"]["ThingName"] = {
        "Fn::Join": ["-", [{"Ref": "Tenant"}, {"Fn::Select": [1, {"Fn::Split": [":", {"Ref": "SerialNumber"}]}]}]]
    }
    body["DeviceConfiguration"] = {
        "home": {"Fn::FindInMap": ["Regions", {"Ref": "Tenant"}, "home"]},
        "greeting": {"Fn::Sub": "hello ${Site} from ${AWS::IoT::Certificate::Id}"},
        "custom": {"Fn::Sub": ["${x}-${Site}", {"x": "y"}]},
    }
    t = ProvisioningTemplate("t", body)
    plan = t.plan(t.parameters({"Tenant": "acme", "Site": "hq", "SerialNumber": "vendor:0042"}, "cid"), POLICIES)
    assert plan.thing_name == "acme-0042"
    assert plan.device_configuration == {"home": "eu-west-1", "greeting": "hello hq from cid", "custom": "y-hq"}


def test_evaluation_errors_name_the_place() -> None:
    body = default_template_body("iotfleet-device")
    body["DeviceConfiguration"] = {"x": {"Fn::FindInMap": ["Nope", "a", "b"]}}
    t = ProvisioningTemplate("t", body)
    params = t.parameters({"Tenant": "a", "Site": "b", "SerialNumber": "c"}, "id")
    with pytest.raises(ProvisioningRejected, match=r"DeviceConfiguration.x: Fn::FindInMap found no"):
        t.plan(params, POLICIES)
    with pytest.raises(ProvisioningRejected, match="policy 'iotfleet-device' named by the template does not exist"):
        t.plan(params, {})


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"Conditions": {}}, "not supported"),
        ({"Resources": {"g": {"Type": "AWS::IoT::ThingGroup"}}}, "unsupported Type"),
        (
            {"Resources": {"thing": {"Type": "AWS::IoT::Thing"}}},
            "needs an AWS::IoT::Thing and an AWS::IoT::Certificate",
        ),
    ],
)
def test_unsupported_templates_fail_when_defined(body: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        ProvisioningTemplate("t", body)


def test_certificate_id_must_be_the_fleet_provisioning_ref() -> None:
    body = default_template_body("iotfleet-device")
    body["Resources"]["certificate"]["Properties"]["CertificateId"] = "abc"
    with pytest.raises(ConfigError, match=CERTIFICATE_ID):
        ProvisioningTemplate("t", body)
