"""Native code that may crash, run where a crash costs one input, not the run.

:func:`call` runs a function (an image decoder, the dense CRF's mean field) in a persistent
helper process, one per worker process, started with ``spawn`` on first use (no fork of a
process that holds TensorFlow's threads) and kept for every later call. :func:`call_each` runs
one function on many inputs in a single round trip (the decode stage's batches), so small
images do not each pay a round trip. The helper is a plain process on a pipe, not a process
pool: a round trip is one write and one read each way, with no feeder or manager threads to
wake, and arrays (decoded images, probabilities) cross as raw out-of-band buffers (pickle
protocol 5) read straight into the receiving array, not pickled into and out of bytes.

When the helper dies (segfault, abort, out-of-memory kill) the call is retried once in a fresh
helper; a call that kills a second helper raises :class:`NativeCrash` ("crashed in <stage>"),
which the pipelines dead-letter. A batch that kills the helper is rerun input by input, so the
crash is pinned on the input that causes it and the batch's other inputs still come back.

Test-only fault injection: when the environment variable :data:`CRASH_ENV` (read per call; one
dictionary lookup when unset) holds ``<stage>:<basename>[,<stage>:<basename>...]``,
:func:`should_crash` is true for inputs of that basename in that stage; the helper then
``os.abort()``\\ s before running the function on that input, a real native crash of the helper.
Pipelines never set it; tests do (tests/test_infer_faults.py, tests/test_isolation.py).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import posixpath
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

CRASH_ENV = "SEGOPS_TEST_CRASH_ON"
T = TypeVar("T")
_DEAD = (EOFError, OSError)  # what the pipe raises once the helper at its other end is gone


class NativeCrash(RuntimeError):
    """The helper process died twice running one input's call."""


def should_crash(stage: str, path: str) -> bool:
    """Test hook: is ``path`` named for ``stage`` in :data:`CRASH_ENV`? (False when unset.)"""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return False
    return f"{stage}:{posixpath.basename(path)}" in {s.strip() for s in spec.split(",")}


def _send(conn: Connection, obj: Any) -> None:
    """One message: the sizes of its out-of-band buffers, its pickle, then each buffer raw
    (pickled first, so an object that cannot pickle raises before anything is written)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    conn.send_bytes(pickle.dumps([r.nbytes for r in raws]))
    conn.send_bytes(body)
    for raw in raws:
        conn.send_bytes(raw)


def _recv(conn: Connection) -> Any:
    sizes = pickle.loads(conn.recv_bytes())
    body = conn.recv_bytes()
    buffers = []
    for size in sizes:
        buffer = bytearray(size)  # writable: arrays rebuilt on it are ordinary writable arrays
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return pickle.loads(body, buffers=buffers)


def _run_one(fn: Callable[..., Any], args: tuple[Any, ...], crash: bool) -> tuple[bool, Any]:
    if crash:  # test hook (CRASH_ENV): a real native crash of this helper process
        os.abort()
    try:
        return True, fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller, as a pool would
        return False, exc


def _serve(conn: Connection) -> None:
    """The helper's loop: (fn, [(args, crash), ...]) in, [(ok, result or exception), ...] out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            fn, jobs = _recv(conn)
        except EOFError:  # the parent is gone or shut us down
            return
        outcomes = [_run_one(fn, args, crash) for args, crash in jobs]
        try:
            _send(conn, outcomes)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # nothing written yet
            _send(conn, [(False, RuntimeError(f"result could not be sent back from the helper: {exc}"))] * len(jobs))


class _Helper:
    """One spawned helper process and the parent's end of its pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True, name="segops-isolation")
        self.process.start()
        child.close()  # else the parent would hold the child's end open and never see EOF
        self.pid = os.getpid()

    def round_trip(self, fn: Callable[..., Any], jobs: list[tuple[tuple[Any, ...], bool]]) -> list[tuple[bool, Any]]:
        _send(self.conn, (fn, jobs))
        return _recv(self.conn)

    def stop(self) -> None:
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


_lock = threading.Lock()  # one round trip at a time on the one helper
_helper: _Helper | None = None


def _round_trip(fn: Callable[..., Any], jobs: list[tuple[tuple[Any, ...], bool]]) -> list[tuple[bool, Any]] | None:
    """The outcomes, or None when the helper died on them (it is then replaced next time)."""
    global _helper
    with _lock:
        if _helper is None or _helper.pid != os.getpid():  # none yet, or inherited through a fork
            _helper = _Helper()
        try:
            return _helper.round_trip(fn, jobs)
        except BaseException as exc:  # dead, or interrupted mid-message: either way not reusable
            _helper.stop()
            _helper = None
            if isinstance(exc, _DEAD):
                return None
            raise


def _crashed(stage: str) -> NativeCrash:
    return NativeCrash(f"crashed in {stage}: the helper process running it died twice (native crash, e.g. segfault or abort)")


def call(stage: str, path: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the helper process (``fn`` and the arguments must pickle). Exceptions
    ``fn`` raises come back as they are; a dead helper is replaced and the call retried once,
    then :class:`NativeCrash` names ``stage``."""
    crash = should_crash(stage, path)
    for _attempt in range(2):
        outcomes = _round_trip(fn, [(args, crash)])
        if outcomes is not None:
            ok, value = outcomes[0]
            if ok:
                return value
            raise value
    raise _crashed(stage)


def call_each(stage: str, fn: Callable[..., T], jobs: Sequence[tuple[str, tuple[Any, ...]]]) -> list[T | BaseException]:
    """``fn(*args)`` for each ``(path, args)`` of ``jobs`` in one round trip to the helper; per
    job its result or the exception it raised (:class:`NativeCrash` for the input the helper
    crashed on). A batch that kills the helper is rerun job by job through :func:`call`."""
    if not jobs:
        return []
    outcomes = _round_trip(fn, [(args, should_crash(stage, path)) for path, args in jobs])
    if outcomes is not None:
        return [value for _ok, value in outcomes]
    results: list[T | BaseException] = []
    for path, args in jobs:
        try:
            results.append(call(stage, path, fn, *args))
        except BaseException as exc:  # noqa: BLE001 - per job, as in the batched round trip
            results.append(exc)
    return results


def shutdown() -> None:
    """Stop the helper process (it also stops with its parent)."""
    global _helper
    with _lock:
        if _helper is not None and _helper.pid == os.getpid():
            _helper.stop()
        _helper = None
