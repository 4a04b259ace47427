"""Process-wide TensorFlow settings that only take effect when made before TensorFlow is
imported: :func:`prefer_onednn` is called by ``import segops``, so every segops process (the
CLI, Beam workers, tests, notebooks that import segops first) gets them.

Why oneDNN: TensorFlow's Linux wheels contain oneDNN kernels but switch them on by default only
on CPUs with VNNI/BF16/AMX instructions (``DefaultOneDnnPolicy`` in tensorflow/core/util/port.cc).
Elsewhere (e.g. AMD EPYC before Zen 4, Intel before Cascade Lake) convolutions fall back to
Eigen, which on the 2-core demo machine needed 1.6x the CPU time per U-Net training step and
spent a sixth of it spinning in the kernel (docs/benchmarks.md, "Training step"). A user's own
``TF_ENABLE_ONEDNN_OPTS`` always wins.
"""

from __future__ import annotations

import os
import platform

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> None:
    """Turn TensorFlow's oneDNN CPU kernels on for x86-64 Linux unless the user decided."""
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        os.environ.setdefault(ONEDNN_ENV, "1")
