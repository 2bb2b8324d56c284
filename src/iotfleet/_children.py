"""Child processes that die with their parent and leave Ctrl-C to it (the simulator's workers, the
local cloud's ingest workers).

A child is spawned, never forked (DESIGN.md decision 10), with SIGINT and SIGTERM blocked while it
starts (:func:`signals_blocked`, in the parent), so a Ctrl-C reaching the whole process group cannot
kill it half started; :func:`become_child` (first thing in the child) ignores both for good, as the
parent alone decides when its children stop, and has the kernel kill the child when the parent dies.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from typing import Final

__all__ = ["LEFT_TO_PARENT", "become_child", "signals_blocked"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
LEFT_TO_PARENT: Final = frozenset({signal.SIGINT, signal.SIGTERM})  # signals a child ignores


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread (a child started meanwhile inherits the block through
    the exec); one that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_PARENT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def become_child() -> int | None:
    """In a spawned child, first: ignore SIGINT and SIGTERM, have the kernel SIGKILL this process when
    the parent dies (Linux; even when the parent is SIGKILLed), and exit at once if the parent died
    before that was armed. Returns the parent's pid (None if there is no multiprocessing parent)."""
    for signum in LEFT_TO_PARENT:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_PARENT)
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415 - Linux only

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d; the parent-pid watch remains", ctypes.get_errno())
    parent = multiprocessing.parent_process()
    parent_pid = None if parent is None else parent.pid
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the death signal was armed: nobody would read our results
    return parent_pid
