"""S3-like objects for job documents: firmware put by the operator, fetched by devices over HTTPS through
presigned URLs, as AWS IoT Jobs hands them out (IOT_CORE.md section 10, ``presignedUrlConfig``).

A job document names an object by its S3 URL inside ``${aws:iot:s3-presigned-url:<url>}``; each time a
device fetches the document, the Jobs service replaces it with :meth:`Presigner.sign`'s URL: AWS's query
parameters (``X-Amz-Algorithm``, ``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-Signature``), valid for the
job's ``expiresInSec``. :class:`ObjectStore` keeps the objects in a directory and serves them on its own
HTTPS port (server certificate only: a presigned URL is its own authorization, as on S3), so an S3 URL
(``https://s3.<region>.amazonaws.com/<bucket>/<key>`` or ``https://<bucket>.s3.<region>.amazonaws.com/<key>``)
of an object it holds is signed as its own URL. Answers, in S3's shape (an XML ``Error`` with ``Code``):
200 with the bytes; 403 ``AccessDenied`` for a URL not signed here, changed or expired; 404 ``NoSuchKey``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

from aiohttp import web

from iotfleet._files import write_private
from iotfleet.cloud.http_server import HttpServer
from iotfleet.errors import ConfigError

__all__ = ["ObjectStore", "Presigner", "s3_url"]

_S3_PATH: Final = re.compile(r"https://s3[.-][a-z0-9-]*\.?amazonaws\.com/([^/?]+)/([^?]+)")
_S3_HOST: Final = re.compile(r"https://([^./]+)\.s3[.-][a-z0-9.-]*amazonaws\.com/([^?]+)")
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules
_KEY_SEGMENT: Final = re.compile(r"[A-Za-z0-9!_.*'()-]+")
_DATE: Final = "%Y%m%dT%H%M%SZ"


def s3_url(region: str, bucket: str, key: str) -> str:
    """The path-style S3 URL of ``bucket``/``key`` in ``region``, as a job document names it."""
    return f"https://s3.{region}.amazonaws.com/{bucket}/{urllib.parse.quote(key)}"


class Presigner:
    """Signs URLs the way the local cloud checks them: HMAC-SHA256 over the URL with AWS's query parameters."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)

    def sign(self, url: str, expires_s: int, now: float | None = None) -> str:
        stamp = time.strftime(_DATE, time.gmtime(time.time() if now is None else now))
        query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Date": stamp, "X-Amz-Expires": str(expires_s)}
        unsigned = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(query)}"
        return f"{unsigned}&X-Amz-Signature={self._signature(unsigned)}"

    def valid(self, url: str, now: float | None = None) -> bool:
        """Whether ``url`` is one this presigner signed, unchanged and not expired."""
        unsigned, sep, signature = url.rpartition("&X-Amz-Signature=")
        if not sep or not hmac.compare_digest(self._signature(unsigned), signature):
            return False
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(unsigned).query))
        try:
            issued = calendar.timegm(time.strptime(query["X-Amz-Date"], _DATE))  # the stamp is UTC
            return (time.time() if now is None else now) <= issued + int(query["X-Amz-Expires"])
        except (KeyError, ValueError):
            return False

    def _signature(self, unsigned: str) -> str:
        return hmac.new(self._secret, unsigned.encode(), hashlib.sha256).hexdigest()


class ObjectStore:
    """Objects under ``directory`` (``<bucket>/<key>``), served over HTTPS on ``host`` (:attr:`port` once
    started) at the URLs :meth:`presign` gives, and counted (:attr:`served`, :attr:`refused`)."""

    def __init__(
        self,
        directory: Path,
        *,
        cert_file: Path,
        key_file: Path,
        host: str = "127.0.0.1",
        advertise: str = "localhost",
        port: int = 0,
        presigner: Presigner | None = None,
        start_thread: Callable[[Callable[[], None], str], threading.Thread] | None = None,
    ) -> None:
        self.directory = directory
        self.advertise = advertise
        self.presigner = presigner or Presigner()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert_file), str(key_file))
        self._server = HttpServer(
            "iotfleet objects", self._handle, host=host, port=port, ssl_context=context, start_thread=start_thread
        )
        self.port = port
        self.served = 0
        self.served_bytes = 0
        self.refused: dict[str, int] = {}
        self._held = {  # what is stored, so presigning needs no disk access on the services' loop
            str(path.relative_to(directory)) for path in directory.glob("*/**/*") if path.is_file()
        }

    def start(self) -> ObjectStore:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def put(self, bucket: str, key: str, data: bytes, *, region: str) -> str:
        """Store ``data`` as ``bucket``/``key``; return its S3 URL (for ``${aws:iot:s3-presigned-url:...}``)."""
        write_private(self._path(bucket, key), data)
        self._held.add(f"{bucket}/{key}")
        return s3_url(region, bucket, key)

    def presign(self, url: str, expires_s: int) -> str:
        """``url`` presigned for ``expires_s``: an S3 URL of an object held here becomes this server's."""
        match = _S3_PATH.fullmatch(url) or _S3_HOST.fullmatch(url)
        if match is not None:
            bucket, key = match.group(1), urllib.parse.unquote(match.group(2))
            if f"{bucket}/{key}" in self._held:
                url = f"https://{self.advertise}:{self.port}/{bucket}/{urllib.parse.quote(key)}"
        return self.presigner.sign(url, expires_s)

    def _path(self, bucket: str, key: str) -> Path:
        """Where ``bucket``/``key`` lives: an S3 bucket name, and a key of ``/``-separated segments of
        S3's safe characters (none empty, ``.`` or ``..``), so nothing names a file outside the store."""
        segments = key.split("/")
        if (
            not _BUCKET.fullmatch(bucket)
            or ".." in bucket
            or len(key) > 1024
            or not all(_KEY_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)
        ):
            raise ConfigError(
                f"object {bucket}/{key}: the bucket must follow S3's naming rules (3-63 of a-z, 0-9, '.' and "
                "'-') and the key be '/'-separated names of letters, digits and !_.*'()- (no empty, '.' or '..')"
            )
        path = self.directory / bucket / key
        if not path.resolve().is_relative_to(self.directory.resolve()):
            raise ConfigError(f"object {bucket}/{key} would be outside the object store")
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._error(405, "MethodNotAllowed", f"{request.method} is not allowed: GET a presigned URL")
        url = f"https://{self.advertise}:{self.port}{request.rel_url.raw_path}?{request.rel_url.raw_query_string}"
        if not self.presigner.valid(url):
            return self._error(403, "AccessDenied", "Request has expired or its signature does not match")
        bucket, _, key = urllib.parse.unquote(request.rel_url.raw_path).lstrip("/").partition("/")
        try:
            path = self._path(bucket, key)
        except ConfigError:
            path = None
        if path is None or f"{bucket}/{key}" not in self._held:
            return self._error(404, "NoSuchKey", "The specified key does not exist.")
        self.served += 1
        self.served_bytes += path.stat().st_size
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    def _error(self, status: int, code: str, message: str) -> web.Response:
        self.refused[code] = self.refused.get(code, 0) + 1
        body = f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        return web.Response(status=status, text=body, content_type="application/xml")
