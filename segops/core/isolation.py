"""Native code that may crash, run where a crash costs one input, not the run.

:func:`call` runs a function (an image decoder, the dense CRF's mean field) in a persistent
helper process, one per worker process, started with ``spawn`` on first use (no fork of a
process that holds TensorFlow's threads) and kept for every later call, so a call costs the
pickling of its arguments and result, not a process start. When the helper dies (segfault,
abort, out-of-memory kill) the call is retried once in a fresh helper, since the call that
killed it may have been a neighbour's; a call that kills a second helper raises
:class:`NativeCrash` ("crashed in <stage>"), which the pipelines dead-letter.

Test-only fault injection: when the environment variable :data:`CRASH_ENV` (read per call; one
dictionary lookup when unset) holds ``<stage>:<basename>[,<stage>:<basename>...]``,
:func:`should_crash` is true for inputs of that basename in that stage; :func:`call` then makes
the helper ``os.abort()`` before running the function, a real native crash of the helper.
Pipelines never set it; tests do (tests/test_infer_faults.py).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

CRASH_ENV = "SEGOPS_TEST_CRASH_ON"
T = TypeVar("T")

_lock = threading.Lock()
_pool: concurrent.futures.ProcessPoolExecutor | None = None


class NativeCrash(RuntimeError):
    """The helper process died twice running one input's call."""


def should_crash(stage: str, path: str) -> bool:
    """Test hook: is ``path`` named for ``stage`` in :data:`CRASH_ENV`? (False when unset.)"""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return False
    return f"{stage}:{posixpath.basename(path)}" in {s.strip() for s in spec.split(",")}


def _run(fn: Callable[..., T], args: tuple[Any, ...], crash: bool) -> T:
    if crash:  # test hook (CRASH_ENV): a real native crash of this helper process
        os.abort()
    return fn(*args)


def _get_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _drop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def call(stage: str, path: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the helper process (``fn`` and the arguments must pickle). Exceptions
    ``fn`` raises come back as they are; a dead helper is replaced and the call retried once,
    then :class:`NativeCrash` names ``stage``."""
    crash = should_crash(stage, path)
    for _attempt in range(2):
        pool = _get_pool()
        try:
            return pool.submit(_run, fn, args, crash).result()
        except BrokenProcessPool:
            _drop_pool(pool)
    raise NativeCrash(f"crashed in {stage}: the helper process running it died twice (native crash, e.g. segfault or abort)")


def shutdown() -> None:
    """Stop the helper process (it also stops with its parent)."""
    with _lock:
        pool = _pool
    if pool is not None:
        _drop_pool(pool)
