"""A blocking facade for plain scripts: the same DeviceClient on a private event-loop thread.

::

    with BlockingDeviceClient(identity=lamp, endpoints=endpoints, tenant="acme", site="hq") as device:
        device.publish("power", {"watts": 12.5})
        for command in device.commands(timeout=30):
            ...

Nothing here re-implements the client: each call runs the async method on the private loop and waits.
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from iotfleet._loop_thread import LoopThread
from iotfleet.config import Identity
from iotfleet.device.client import Command, DeviceClient, Payload, PublishReceipt
from iotfleet.device.jobs import JobExecution
from iotfleet.device.stream import Stream
from iotfleet.errors import ClientStateError
from iotfleet.transport.base import InboundMessage

__all__ = ["BlockingDeviceClient", "BlockingJobExecution"]

T = TypeVar("T")


class BlockingDeviceClient:
    """Takes exactly the keyword arguments of :class:`DeviceClient`; use it as a ``with`` block."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._runner: LoopThread | None = None
        self._device: DeviceClient | None = None
        self._pumps: set[concurrent.futures.Future[None]] = set()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._runner is None:
            coro.close()
            raise ClientStateError("use 'with BlockingDeviceClient(...) as device:' first")
        return self._runner.call(coro, timeout)

    @property
    def device(self) -> DeviceClient:
        if self._device is None:
            raise ClientStateError("use 'with BlockingDeviceClient(...) as device:' first")
        return self._device

    def __enter__(self) -> BlockingDeviceClient:
        if self._runner is not None:
            raise ClientStateError("a BlockingDeviceClient is entered once; create a new one")
        self._runner = LoopThread("iotfleet-blocking-device")

        async def start() -> DeviceClient:
            device = DeviceClient(**self._kwargs)
            return await device.__aenter__()

        try:
            self._device = self._run(start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pump in list(self._pumps):
            pump.cancel()
        if self._device is not None:
            device, self._device = self._device, None
            self._run(device.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.stop(unwind_s=5)  # cancelled iterators unwind before the loop stops

    def publish(self, stream: str, payload: Payload, *, qos: int = 1, timeout: float | None = None) -> PublishReceipt:
        """Publish to this thing's ``stream`` and wait for the PUBACK (see DeviceClient.publish)."""
        return self._run(self.device.publish(stream, payload, qos=qos, timeout=timeout))

    def publish_to(self, topic: str, payload: Payload, *, qos: int = 1, timeout: float | None = None) -> PublishReceipt:
        return self._run(self.device.publish_to(topic, payload, qos=qos, timeout=timeout))

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._run(self.device.subscribe(topic_filter, qos))

    def flush(self, timeout: float | None = None) -> None:
        self._run(self.device.flush(timeout))

    def use_identity(self, identity: Identity) -> None:
        """Switch to another certificate of the same thing (see DeviceClient.use_identity)."""
        self._run(self.device.use_identity(identity))

    def messages(self, topic_filter: str | None = None, *, timeout: float | None = None) -> Iterator[InboundMessage]:
        """Inbound messages; stops after ``timeout`` seconds without one (None: never) or when the client closes."""
        return self._iterate(lambda: self.device.messages(topic_filter), timeout)

    def commands(self, *, timeout: float | None = None) -> Iterator[Command]:
        """Commands for this thing, subscribed when this returns; stops after ``timeout`` seconds without one
        (None: never) or when the client closes."""
        return self._iterate(self.device.commands, timeout)

    def jobs(self, *, timeout: float | None = None) -> Iterator[BlockingJobExecution]:
        """The thing's job executions, as :meth:`DeviceClient.jobs` hands them over; stops after ``timeout``
        seconds without a new one (None: never) or when the client closes."""
        executions = self._run(_jobs_of(self.device))

        async def next_job() -> JobExecution:
            return await anext(executions)

        while True:
            if self._runner is None:
                return
            future = self._runner.submit(next_job())
            try:
                job = future.result(timeout)
            except (StopAsyncIteration, concurrent.futures.CancelledError):
                return
            except TimeoutError:
                future.cancel()
                return
            yield BlockingJobExecution(job, self._run)

    def _iterate(self, source: Callable[[], Stream[Any]], timeout: float | None) -> Iterator[Any]:
        """Open ``source()`` on the loop and await its subscription, then hand its items to this thread."""
        items: queue.Queue[Any] = queue.Queue()

        async def subscribed() -> Stream[Any]:
            return await source()

        stream = self._run(subscribed())

        async def pump() -> None:
            try:
                async for item in stream:
                    items.put(item)
            except Exception as exc:  # noqa: BLE001 - handed to the reading thread, raised there
                items.put(_Failed(exc))
            finally:
                items.put(_END)

        if self._runner is None:
            raise ClientStateError("use 'with BlockingDeviceClient(...) as device:' first")
        task = self._runner.submit(pump())
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        loop = self._runner.loop

        def generate() -> Iterator[Any]:
            try:
                while True:
                    try:
                        item = items.get(timeout=timeout)
                    except queue.Empty:
                        return
                    if item is _END:
                        return
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(stream.end)

        return generate()


_END = object()


async def _jobs_of(device: DeviceClient) -> AsyncIterator[JobExecution]:
    return device.jobs()


class BlockingJobExecution:
    """A :class:`~iotfleet.device.jobs.JobExecution` with blocking methods."""

    def __init__(self, job: JobExecution, run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.job = job
        self._run = run

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def document(self) -> Any:
        return self.job.document

    @property
    def status(self) -> str:
        return self.job.status

    def progress(self, details: Mapping[str, str], *, step_timeout_min: int | None = None) -> None:
        self._run(self.job.progress(details, step_timeout_min=step_timeout_min))

    def succeed(self, details: Mapping[str, str] | None = None) -> None:
        self._run(self.job.succeed(details))

    def fail(self, reason: str, details: Mapping[str, str] | None = None) -> None:
        self._run(self.job.fail(reason, details))

    def reject(self, reason: str) -> None:
        self._run(self.job.reject(reason))


class _Failed:
    """An error of a stream, carried to the reading thread."""

    def __init__(self, error: Exception) -> None:
        self.error = error
