"""The device SDK: DeviceClient, its blocking facade, the outbox and failover."""

from iotfleet.device.blocking import BlockingDeviceClient
from iotfleet.device.client import Command, DeviceClient, DeviceState, PublishReceipt
from iotfleet.device.events import (
    Connected,
    ConnectFailed,
    DeviceEvent,
    Disconnected,
    EventKind,
    FailedOver,
    PublishAcked,
    PublishFailed,
)
from iotfleet.device.heap import settle_heap
from iotfleet.device.jobs import JobExecution, JobRejected
from iotfleet.transport.base import DisconnectReason

__all__ = [
    "BlockingDeviceClient",
    "Command",
    "ConnectFailed",
    "Connected",
    "DeviceClient",
    "DeviceEvent",
    "DeviceState",
    "DisconnectReason",
    "Disconnected",
    "EventKind",
    "FailedOver",
    "JobExecution",
    "JobRejected",
    "PublishAcked",
    "PublishFailed",
    "PublishReceipt",
    "settle_heap",
]
