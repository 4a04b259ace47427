"""Process-wide TensorFlow settings that only take effect when made before TensorFlow is
imported: :func:`prefer_onednn` is called by ``import segops``, so every segops process (the
CLI, Beam workers, tests, notebooks that import segops first) gets them.

Why oneDNN: TensorFlow's Linux wheels contain oneDNN kernels but switch them on by default only
on CPUs with VNNI/BF16/AMX instructions (``DefaultOneDnnPolicy`` in tensorflow/core/util/port.cc).
Elsewhere (e.g. AMD EPYC before Zen 4, Intel before Cascade Lake) convolutions fall back to
Eigen, which on the 2-core demo machine needed 1.6x the CPU time per U-Net training step and
spent a sixth of it spinning in the kernel (docs/benchmarks.md, "Training step"). A user's own
``TF_ENABLE_ONEDNN_OPTS`` always wins. Imported after TensorFlow on such a CPU (a notebook's
``import tensorflow`` first), segops can no longer change it and says so with a ``RuntimeWarning``.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections.abc import Callable, Mapping

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


# CPU flags (/proc/cpuinfo) on which TensorFlow turns oneDNN on by itself (DefaultOneDnnPolicy)
ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})


def prefer_onednn() -> None:
    """Turn TensorFlow's oneDNN CPU kernels on for x86-64 Linux unless the user decided; warn
    when TensorFlow was imported first on a CPU where that leaves them off."""
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        message = late_onednn_message("tensorflow" in sys.modules, os.environ, _cpu_flags)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        os.environ.setdefault(ONEDNN_ENV, "1")  # still right for the subprocesses it starts


def late_onednn_message(tensorflow_imported: bool, environ: Mapping[str, str],
                        cpu_flags: Callable[[], frozenset[str]]) -> str | None:  # fmt: skip
    """Why this process trains at about half speed, or None: TensorFlow was imported before
    segops, nobody set :data:`ONEDNN_ENV`, and the CPU lacks the flags on which TensorFlow turns
    oneDNN on by itself (the test suite trained on Eigen so on an AMD EPYC until its conftest
    imported segops first: 1.9x the time of its CPU training test).

    Example:
        >>> late_onednn_message(True, {}, lambda: frozenset({"avx2"})) is not None
        True
        >>> late_onednn_message(True, {}, lambda: frozenset({"avx2", "avx512_vnni"})) is None
        True
        >>> late_onednn_message(False, {}, lambda: frozenset({"avx2"})) is None
        True
        >>> late_onednn_message(True, {"TF_ENABLE_ONEDNN_OPTS": "0"}, lambda: frozenset({"avx2"})) is None
        True
    """
    if not tensorflow_imported or ONEDNN_ENV in environ or cpu_flags() & ONEDNN_DEFAULT_FLAGS:
        return None
    return (f"TensorFlow was imported before segops, so its oneDNN kernels stay off on this CPU and "
            f"training steps take 1.6-1.9x as long: import segops first, or set {ONEDNN_ENV}=1 before "
            f"TensorFlow is imported (segops.core.runtime)")  # fmt: skip


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
