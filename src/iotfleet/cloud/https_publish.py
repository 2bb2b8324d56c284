"""HTTPS device publish (IOT_CORE.md section 11(b)): ``POST https://<host>:<https_port>/topics/<topic>?qos=1``
with the device's certificate, one endpoint per region.

The TLS handshake asks for a client certificate signed by the cloud's CA. The request is then what IoT
Core checks for HTTPS: the certificate must be ACTIVE in the region's registry (on IoT Core an INACTIVE or
REVOKED one fails the handshake; here it gets 403, the handshake being set up once), ``iot:Publish`` on
``topic/<topic>`` under the certificate's policies, with no ``iot:Connect`` check and, as HTTPS has no
client id and no thing connection, **no ``${iot:ClientId}`` nor thing policy variable resolved**
(inferred in section 11(b)): the rendered device policy, built on the thing name, allows nothing over
HTTPS; give such devices a policy of their own. The account's publish quota applies (429). The message
then goes through the region's broker as the cloud's operator, with the user properties of the
``x-amz-mqtt5-user-properties`` header, so subscribers, rules and the ingest get it as from MQTT.

Answers: 200 ``{"message": "OK", "traceId": ...}``; errors in AWS's shape (``{"message", "traceId"}``,
``x-amzn-ErrorType``): 400 InvalidRequest, 403 Forbidden, 413 RequestEntityTooLarge, 429 Throttling,
503 ServiceUnavailable.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from iotfleet._rate import TokenBucket
from iotfleet.cloud.http_server import AwsError, HttpServer
from iotfleet.cloud.registry import CertificateRecord, CertificateStatus, Registry
from iotfleet.errors import TopicError
from iotfleet.policy_engine import PolicyDocument, RequestContext, authorize
from iotfleet.topics import validate_topic

__all__ = ["MAX_PAYLOAD", "HttpsPublish", "parse_user_properties"]

MAX_PAYLOAD = 128 * 1024  # IoT Core's message size limit


class HttpsPublish:
    """One region's HTTPS publish endpoint on ``host`` (an ephemeral port: :attr:`port`), on its own
    loop thread. ``publish(topic, payload, user_properties)`` hands a message to the region's broker and
    returns once the broker acknowledged it (False when the region is down). ``HEAD`` answers 200 for an
    ACTIVE certificate and 401 otherwise, so a client can check the endpoint takes it before it sends (on
    IoT Core such a certificate fails the handshake)."""

    def __init__(
        self,
        *,
        region: str,
        account: str,
        registry: Registry,
        publish: Callable[[str, bytes, list[tuple[str, str]]], Awaitable[bool]],
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        account_rate: float = 0.0,
        start_thread: Callable[[Callable[[], None], str], threading.Thread] | None = None,
    ) -> None:
        self.region, self.account, self.registry, self._publish = region, account, registry, publish
        self.host, self.port = host, port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self._bucket = TokenBucket(account_rate) if account_rate > 0 else None
        self._policies: dict[str, PolicyDocument] = {}
        self._server = HttpServer(
            f"iotfleet https publish {region}", self._handle, host=host, port=port, ssl_context=self.context,
            max_body=MAX_PAYLOAD + 1, start_thread=start_thread,
        )  # fmt: skip
        self.published = 0
        self.refused: dict[str, int] = {}

    def start(self) -> HttpsPublish:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def kill(self) -> None:
        """The region died: stop listening, drop the connections."""
        self._server.kill()

    def freeze(self) -> None:
        """The region is blackholed: hold every request unanswered."""
        self._server.freeze()

    def restore(self) -> None:
        self._server.restore()

    @property
    def held(self) -> int:
        """Requests held unanswered while the region is blackholed."""
        return self._server.held

    async def _handle(self, request: web.Request) -> web.Response:
        trace = str(uuid.uuid4())
        try:
            if request.method == "HEAD":  # a client checking the endpoint takes its certificate
                if self._active(_common_name(request)) is None:
                    raise AwsError(401, "UnauthorizedException", "the certificate is not ACTIVE in this region")
                return web.Response(status=200)
            topic, qos, payload, properties, common_name = await self._read(request)
            self._authorize(common_name, topic)
            if self._bucket is not None and self._bucket.acquire(time.monotonic()) > 0:
                raise AwsError(429, "ThrottlingException", "Rate exceeded: the account's publish quota")
            del qos  # delivered at QoS 1 through the broker either way
            if not await self._publish(topic, payload, properties):
                raise AwsError(503, "ServiceUnavailableException", f"region {self.region} is unavailable")
        except AwsError as refused:
            self.refused[refused.code] = self.refused.get(refused.code, 0) + 1
            return refused.response(traceId=trace)
        self.published += 1
        return web.json_response({"message": "OK", "traceId": trace})

    async def _read(self, request: web.Request) -> tuple[str, int, bytes, list[tuple[str, str]], str]:
        if request.method != "POST":
            raise AwsError(405, "MethodNotAllowedException", f"{request.method} is not allowed: POST /topics/<topic>")
        path = request.rel_url.raw_path
        if not path.startswith("/topics/"):
            raise AwsError(404, "ResourceNotFoundException", "publish with POST /topics/<url-encoded topic>")
        topic = urllib.parse.unquote(path.removeprefix("/topics/"))
        try:
            validate_topic(topic)
        except TopicError as exc:
            raise AwsError(400, "InvalidRequestException", exc.message) from exc
        qos_text = request.query.get("qos", "0")
        if qos_text not in ("0", "1"):
            raise AwsError(400, "InvalidRequestException", f"qos {qos_text!r} must be 0 or 1")
        if request.query.get("retain", "false").lower() == "true":
            raise AwsError(400, "InvalidRequestException", "retain is not served here")
        payload = await request.read()
        if len(payload) > MAX_PAYLOAD:
            raise AwsError(413, "RequestEntityTooLargeException", f"the payload is over {MAX_PAYLOAD} bytes")
        return topic, int(qos_text), payload, _user_properties(request), _common_name(request)

    def _active(self, common_name: str) -> CertificateRecord | None:
        """The certificate of ``common_name`` if this region has it ACTIVE."""
        record = self.registry.certificate_by_identity(common_name)
        return record if record is not None and record.status is CertificateStatus.ACTIVE else None

    def _authorize(self, common_name: str, topic: str) -> None:
        record = self._active(common_name)
        if record is None:
            raise AwsError(403, "ForbiddenException", "the certificate is not ACTIVE in this region")
        attached = self.registry.policies_of(record.certificate_id).values()
        documents = [self._parsed(json.dumps(d, sort_keys=True)) for d in attached]
        context = RequestContext(client_id="", certificate={"Subject.CommonName": common_name})
        resource = f"arn:aws:iot:{self.region}:{self.account}:topic/{topic}"
        if not authorize(documents, "iot:Publish", resource, context).allowed:
            raise AwsError(
                403, "ForbiddenException", f"iot:Publish on {resource}: not allowed by the certificate's policies"
            )

    def _parsed(self, text: str) -> PolicyDocument:
        document = self._policies.get(text)
        if document is None:
            document = self._policies[text] = PolicyDocument.parse(text, name="a certificate's policy")
        return document


def _common_name(request: web.Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    for entry in (peer or {}).get("subject", ()):
        for key, value in entry:
            if key == "commonName":
                return str(value)
    raise AwsError(401, "UnauthorizedException", "no client certificate with a common name")


def parse_user_properties(header: str | None) -> list[tuple[str, str]]:
    """The ``x-amz-mqtt5-user-properties`` header (base64 of a JSON list of ``{"key", "value"}``) as
    pairs; a malformed one raises ValueError naming the header."""
    if not header:
        return []
    try:
        decoded = json.loads(base64.b64decode(header))
        return [(str(item["key"]), str(item["value"])) for item in decoded]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"x-amz-mqtt5-user-properties: {exc!r}") from exc


def _user_properties(request: web.Request) -> list[tuple[str, str]]:
    try:
        return parse_user_properties(request.headers.get("x-amz-mqtt5-user-properties"))
    except ValueError as exc:
        raise AwsError(400, "InvalidRequestException", str(exc)) from exc
