"""The simulator's runner: worker processes, one DeviceClient (one connection, one identity) per device.

The parent (:mod:`~iotfleet.sim.runner.parent`) spawns one worker process per
:class:`~iotfleet.sim.runner.messages.WorkerSpec` and reads what they send
(:class:`~iotfleet.sim.runner.messages.WorkerMessage`); each worker (:mod:`~iotfleet.sim.runner.worker`)
runs its devices on one event loop, paced by one timer (:mod:`~iotfleet.sim.runner.pacer`), and
measures them (:mod:`~iotfleet.sim.runner.metrics`).
"""

from iotfleet.sim.runner.messages import ClaimSettings, WorkerMessage, WorkerSpec
from iotfleet.sim.runner.metrics import WorkerMetrics
from iotfleet.sim.runner.parent import default_workers, run_workers

__all__ = ["ClaimSettings", "WorkerMessage", "WorkerMetrics", "WorkerSpec", "default_workers", "run_workers"]
