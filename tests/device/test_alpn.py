"""Both transports offer ALPN ``x-amzn-mqtt-ca`` on port 443, as IoT Core needs for MQTT over 443."""

from __future__ import annotations

import asyncio
import secrets
import struct

import pytest

from iotfleet.config import Endpoint, Identity
from iotfleet.errors import ConnectError
from iotfleet.transport import resolve_transport
from iotfleet.transport.base import ALPN_IOT_CORE, ConnectOptions

ALPN_EXTENSION = 0x0010


def offered_alpn(hello: bytes) -> list[str] | None:
    """The protocols in a TLS ClientHello's ALPN extension; None when it has none."""
    body = hello[5 + 4 :]  # record header, handshake header
    pos = 2 + 32  # client_version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 2
    while pos < end:
        kind, size = struct.unpack_from("!HH", body, pos)
        pos += 4
        if kind == ALPN_EXTENSION:
            names, at = [], pos + 2
            while at < pos + size:
                length = body[at]
                names.append(body[at + 1 : at + 1 + length].decode())
                at += 1 + length
            return names
        pos += size
    return None


async def client_hello(port: int, identity: Identity, transport: str) -> bytes:
    """Listen on a loopback address and ``port``, let the transport connect, return its ClientHello."""
    host = "127." + ".".join(str(1 + secrets.randbelow(254)) for _ in range(3))  # away from other tests
    hello: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(5)
        record = await reader.readexactly(struct.unpack_from("!H", header, 3)[0])
        if not hello.done():
            hello.set_result(header + record)
        writer.close()

    server = await asyncio.start_server(serve, host, port)
    try:
        endpoint = Endpoint(region="eu-west-1", host=host, port=port)
        options = ConnectOptions(client_id="lamp-1", identity=identity, connect_timeout_s=3.0)
        with pytest.raises(ConnectError):  # the listener hangs up after the ClientHello
            await resolve_transport(transport).connect(endpoint, options)
        return await asyncio.wait_for(hello, 5)
    finally:
        server.close()
        await server.wait_closed()


def test_port_443_offers_the_iot_core_alpn(lamp: Identity, transport: str) -> None:
    hello = asyncio.run(client_hello(443, lamp, transport))
    assert offered_alpn(hello) == [ALPN_IOT_CORE]


def test_other_ports_offer_no_alpn(lamp: Identity, transport: str) -> None:
    hello = asyncio.run(client_hello(8443, lamp, transport))
    assert offered_alpn(hello) is None
