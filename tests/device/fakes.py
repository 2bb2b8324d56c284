"""Fakes of our own transport protocols (transport.base), for testing the device's parts without a broker.

The real transports are exercised against mosquitto in test_client.py; these let each part's rules be
checked on their own, with the test deciding when a PUBACK arrives and when a session ends.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from iotfleet.config import Endpoint
from iotfleet.errors import ConnectError, ConnectionLost
from iotfleet.transport.base import ConnectOptions, DisconnectInfo, PublishCallback, Session

EU = Endpoint(region="eu-west-1", host="127.0.0.1", port=1)
US = Endpoint(region="us-east-1", host="127.0.0.1", port=2)


@dataclass
class Sent:
    """One publish handed to a fake session; ``ack(code)`` answers it the way a transport would."""

    topic: str
    payload: bytes
    qos: int
    properties: Sequence[tuple[str, str]]
    done: PublishCallback
    answered: bool = False

    def ack(self, code: int = 0, at: float | None = None) -> None:
        """``at``: when the transport saw the PUBACK (now unless given)."""
        assert not self.answered, "a transport answers each publish once"
        self.answered = True
        self.done(code, None, time.monotonic() if at is None else at)

    def lose(self) -> None:
        assert not self.answered, "a transport answers each publish once"
        self.answered = True
        self.done(0, ConnectionLost("the session ended"), time.monotonic())


@dataclass
class FakeSession:
    """Records publishes, SUBSCRIBEs and UNSUBSCRIBEs; refuses the filters in ``refuse``; ``end`` ends it."""

    endpoint: Endpoint = EU
    refuse: set[str] = field(default_factory=set)
    lost: bool = False
    sent: list[Sent] = field(default_factory=list)
    subscribes: list[list[tuple[str, int]]] = field(default_factory=list)
    unsubscribes: list[list[str]] = field(default_factory=list)
    closed: asyncio.Future[DisconnectInfo] = field(default_factory=asyncio.Future)

    def send(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]], done: PublishCallback
    ) -> None:
        if self.lost:
            raise ConnectionLost("the session ended")
        self.sent.append(Sent(topic, payload, qos, user_properties, done))

    async def publish(
        self, topic: str, payload: bytes, qos: int, user_properties: Sequence[tuple[str, str]] = ()
    ) -> int:
        raise NotImplementedError("the device's parts publish through send()")

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        if self.lost:
            raise ConnectionLost("the session ended")
        self.subscribes.append(list(filters))
        return [0x87 if f in self.refuse else q for f, q in filters]

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        if self.lost:
            raise ConnectionLost("the session ended")
        self.unsubscribes.append(list(filters))

    def end(self, reason: str, *, by_client: bool = False) -> None:
        """The session ends (the broker or the network ended it): in-flight publishes get ConnectionLost."""
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(DisconnectInfo(reason, by_client=by_client))
        for publish in self.sent:
            if not publish.answered:
                publish.lose()

    async def close(self) -> None:
        self.end("closed", by_client=True)


@dataclass
class FakeTransport:
    """Opens a FakeSession per CONNECT to an endpoint in ``up``; fails the others with ConnectError (reason
    ``refused``, the TCP refusal of an endpoint that is down, unless ``refusing`` gives another)."""

    up: set[Endpoint] = field(default_factory=set)
    refusing: dict[Endpoint, str] = field(default_factory=dict)  # endpoint -> the reason it fails a CONNECT with
    refused_certificates: set[str] = field(default_factory=set)  # cert files every endpoint refuses (0x87)
    name: str = "fake"
    sessions: list[FakeSession] = field(default_factory=list)
    attempts: list[Endpoint] = field(default_factory=list)
    attempted_at: list[float] = field(default_factory=list)  # time.monotonic() of each attempt
    identities: list[str] = field(default_factory=list)  # the certificate file of each session opened
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # set on each new session
    delays: dict[Endpoint, float] = field(default_factory=dict)  # endpoint -> how long a CONNECT takes there
    connecting: collections.Counter[Endpoint] = field(default_factory=collections.Counter)  # CONNECTs in flight

    async def connect(self, endpoint: Endpoint, options: ConnectOptions) -> Session:
        self.attempts.append(endpoint)
        self.attempted_at.append(time.monotonic())
        if endpoint in self.delays:  # whether the endpoint is up is decided when the CONNECT completes
            self.connecting[endpoint] += 1
            try:
                await asyncio.sleep(self.delays[endpoint])
            finally:
                self.connecting[endpoint] -= 1
        if str(options.identity.cert_file) in self.refused_certificates:
            raise ConnectError("not authorized", endpoint=str(endpoint), reason="connack 0x87")
        if endpoint not in self.up:
            reason = self.refusing.get(endpoint, "refused")
            raise ConnectError(f"{endpoint} failed the connection: {reason}", endpoint=str(endpoint), reason=reason)
        session = FakeSession(endpoint=endpoint)
        self.sessions.append(session)
        self.identities.append(str(options.identity.cert_file))
        self.connected.set()
        return session
