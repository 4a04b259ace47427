"""Dense-CRF refinement of softmax probabilities (pydensecrf2), fast enough for 2-megapixel frames.

The model is the fully connected CRF of Krähenbühl & Koltun, "Efficient Inference in Fully
Connected CRFs with Gaussian Edge Potentials" (NIPS 2011), solved by mean field with the
permutohedral lattice (pydensecrf2, import name ``pydensecrf``):

* unary  ``-log p`` (probabilities clipped at 1e-5, as ``pydensecrf.utils.unary_from_softmax``);
* a Gaussian (smoothness) kernel over positions, ``sxy=3, compat=3`` (the appearance-free term
  with the values Krähenbühl & Koltun and DeepLab, Chen et al. 2015/2018, use unchanged);
* a bilateral (appearance) kernel over positions and RGB, ``sxy=160, srgb=5, compat=5``: a wider,
  more colour-selective and weaker kernel than pydensecrf's example (``sxy=80, srgb=13,
  compat=10``, after Krähenbühl & Koltun), in the direction of DeepLab's cross-validated values
  (``srgb`` 3-5, weight 4); chosen on scenes the models never trained on (docs/infer.md,
  "Dense CRF"). ``sxy`` is in pixels of a 1024-row frame and scales with the image height
  (:meth:`CRFParams.for_height`);
* Potts compatibility, diagonal kernels, symmetric normalisation (pydensecrf's defaults);
  5 mean-field iterations.

:func:`dense_crf_reference` runs exactly that at full resolution over all classes: the baseline.

Where the time goes (``bench/bench_crf.py``): building the unary (``-log`` of every probability),
building the two lattices, and, most of it, the five mean-field iterations, whose cost is
(pixels x classes x iterations). Nothing there depends on the probability values, so the only
levers are fewer pixels and fewer classes.
:func:`refine` (the fast path) therefore

1. **drops classes without probability mass** (max probability over the image below
   ``min_class_prob``, default 1e-3); such a class cannot win a pixel after
   mean field and only costs lattice passes. One class left: the answer is known, no CRF.
2. **runs the CRF at reduced resolution.** Probabilities and image are area-averaged by an
   integer factor ``s`` (auto: the smallest giving <= ``target_pixels`` = 2^17 CRF pixels, i.e.
   s = 4 for 1024x2048), and both spatial standard deviations are divided by ``s`` so that the
   kernels cover the same image area; ``srgb`` and the compatibilities are unchanged (the
   kernels are normalised, so messages do not depend on pixel density). This is ``s^2`` fewer
   pixels through every lattice pass.
3. **returns to full resolution with one more mean-field update there.** After mean field,
   ``log Q = -unary - message + const`` per pixel, so the low-resolution message is
   ``log Q - log p``. Each full-resolution pixel takes the joint bilateral upsampling (Kopf et
   al., "Joint Bilateral Upsampling", SIGGRAPH 2007) of that message from the 2x2 low-res cells
   around it (spatial sigma of one cell, colour sigma ``srgb`` between the pixel and each cell:
   the CRF's own appearance kernel), adds its own full-resolution ``log p`` and takes argmax.
   Plain bilinear upsampling of the marginals instead puts boundaries on the cell grid, missing
   the colour edges the full-resolution CRF snaps to. The update is computed only where the four
   cells disagree on their label (a band along boundaries); elsewhere the pixel takes its cell's
   label.

How closely this agrees with the full-resolution baseline, and at what cost, is measured by
``bench/bench_crf.py``. ``CRFParams(scale=1, min_class_prob=0)`` (:func:`full_resolution`) is
the exact baseline.

Measurements: docs/benchmarks.md, "Dense CRF" and "Measurements formerly in docstrings".
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from segops.core.options import NOT_ON_CLI, OptionsError, flag
from segops.inference.probabilities import TopK

UNARY_CLIP = 1e-5  # as pydensecrf.utils.unary_from_softmax: -log(1e-5) ~ 11.5 at most
Runner = Callable[..., Any]  # runner(fn, *args) -> fn(*args), possibly in another process
_JBU_CHUNK = 1 << 16  # pixels per vectorised step of the band update (bounds its temporaries)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings; the module docstring says where the defaults come from."""

    iterations: int = field(default=5, metadata=flag("Mean-field iterations of the CRF."))
    gaussian_sxy: float = field(default=3.0, metadata=flag("Smoothness kernel: spatial std-dev in pixels."))
    gaussian_compat: float = field(default=3.0, metadata=flag("Smoothness kernel: weight (Potts)."))
    bilateral_sxy: float = field(default=160.0, metadata=flag(
        "Appearance kernel: spatial std-dev in pixels of an image --crf-bilateral-reference-height rows tall."))
    bilateral_srgb: float = field(default=5.0, metadata=flag("Appearance kernel: colour std-dev (0..255)."))
    bilateral_compat: float = field(default=5.0, metadata=flag("Appearance kernel: weight (Potts)."))
    # bilateral_sxy is in pixels of an image this many rows tall and scales with the image's
    # height (the kernel then spans the same share of the scene); 0 = pixels at every size
    bilateral_reference_height: int = field(default=1024, metadata=flag(
        "--crf-bilateral-sxy scales with image height / this (the kernel spans the same share of the scene); "
        "0 = pixels at every size."))
    # fast path
    scale: int = field(default=0, metadata=flag(
        "CRF grid downsampling factor; 0 = auto (~131k CRF pixels), 1 = full resolution."))
    target_pixels: int = field(default=1 << 17, metadata=NOT_ON_CLI)  # the grid of scale 0 (auto)
    min_class_prob: float = field(default=1e-3, metadata=flag(
        "Classes whose max probability is below this skip the CRF."))

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise OptionsError("CRF iterations must be >= 1")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise OptionsError(f"CRF {name} must be > 0")
        if self.bilateral_reference_height < 0:
            raise OptionsError("CRF bilateral_reference_height must be >= 0 (0 = bilateral_sxy in pixels)")
        if self.scale < 0 or self.target_pixels < 1:
            raise OptionsError("CRF scale must be >= 0 (0 = auto) and target_pixels >= 1")
        if not 0.0 <= self.min_class_prob < 1.0:
            raise OptionsError("CRF min_class_prob must be in [0, 1)")

    def for_height(self, height: int) -> CRFParams:
        """These settings for an image ``height`` rows tall: ``bilateral_sxy`` in its pixels."""
        if not self.bilateral_reference_height:
            return self
        sxy = self.bilateral_sxy * height / self.bilateral_reference_height
        return replace(self, bilateral_sxy=sxy, bilateral_reference_height=0)

    def scale_for(self, height: int, width: int) -> int:
        if self.scale:
            return self.scale
        return max(1, math.ceil(math.sqrt(height * width / self.target_pixels)))


@dataclass
class CRFResult:
    labels: np.ndarray  # (H, W) uint8 class indices (trainIds)
    scale: int  # CRF grid downsampling factor actually used
    classes: np.ndarray  # class indices that went into the CRF
    band_fraction: float  # fraction of pixels whose marginal was upsampled edge-aware
    timings_ms: dict[str, float] = field(default_factory=dict)


def _check_inputs(probs: np.ndarray, image: np.ndarray) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probabilities must be (H, W, C), got shape {probs.shape}")
    if image.shape != (*probs.shape[:2], 3) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (H, W, 3) matching the probabilities {probs.shape[:2]}, "
            f"got {image.dtype} {image.shape}"
        )


def unary(probs_hwc: np.ndarray) -> np.ndarray:
    """(C, H*W) float32 C-contiguous ``-log p`` as pydensecrf expects."""
    c = probs_hwc.shape[2]
    u = np.clip(probs_hwc, UNARY_CLIP, 1.0).reshape(-1, c).T  # (C, N) view
    u = np.ascontiguousarray(u, dtype=np.float32)
    np.log(u, out=u)
    np.negative(u, out=u)
    return u


def _mean_field(probs: np.ndarray, image: np.ndarray, params: CRFParams, scale: int) -> np.ndarray:
    """Mean-field marginals (H, W, C) float32 on the given grid, spatial sigmas divided by scale."""
    import pydensecrf.densecrf as dcrf

    h, w, c = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary(probs))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy / scale, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy / scale,
        srgb=params.bilateral_srgb,
        rgbim=np.ascontiguousarray(image),
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)  # (C, N)
    return q.T.reshape(h, w, c)


def dense_crf_reference(probs: np.ndarray, image: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Baseline: full-resolution pydensecrf2 over all classes. Returns marginals (H, W, C) float32."""
    params = (params or CRFParams()).for_height(probs.shape[0])
    _check_inputs(probs, image)
    return _mean_field(np.asarray(probs, dtype=np.float32), image, params, 1)


def _area_downsample(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area-average ``arr`` (H, W[, C]) to (h, w[, C]); any channel count."""
    out_shape = (h, w) if arr.ndim == 2 else (h, w, arr.shape[2])
    integer = arr.shape[0] % h == 0 and arr.shape[1] % w == 0
    if arr.ndim == 2 or arr.shape[2] <= 4 or integer:  # OpenCV's fast path takes any channel count
        return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA).reshape(out_shape)
    # non-integer ratio: OpenCV's general area resize takes at most 4 channels at a time
    parts = [cv2.resize(arr[..., i : i + 4], (w, h), interpolation=cv2.INTER_AREA) for i in range(0, arr.shape[2], 4)]
    return np.concatenate([p.reshape(h, w, -1) for p in parts], axis=2)


def _nearest_cell(full: int, low: int) -> np.ndarray:
    """Full-resolution row (or column) -> the low-res cell containing its centre."""
    return np.minimum(((np.arange(full) + 0.5) * low / full).astype(np.int32), low - 1)


def _upsample_labels(
    q: np.ndarray,
    small_probs: np.ndarray,
    gather: Callable[[np.ndarray, np.ndarray], np.ndarray],
    small_rgb: np.ndarray,
    image: np.ndarray,
    srgb: float,
) -> tuple[np.ndarray, float]:
    """Full-resolution labels from the low-res marginals ``q`` (h, w, K): one last mean-field
    update at full resolution, with messages upsampled edge-aware.

    After mean field, ``log q = -unary - message + const`` per low-res pixel, so the converged
    message is ``log q - log p_small`` (up to a per-pixel constant that argmax ignores). Each
    full-resolution pixel takes the joint-bilateral upsampling of that message from the 2x2
    low-res cells around it (bilinear support; weights: spatial sigma of one low-res pixel and
    the CRF's colour kernel ``srgb`` between the pixel and each cell), adds its own
    full-resolution ``log p`` and takes argmax: a full-resolution update that keeps pixel-sharp
    edges. Computed only where the four cells disagree on their argmax; elsewhere the pixel
    takes its cell's label. ``small_probs`` holds the K classes of ``q``; ``gather(y, x)`` gives
    the full-resolution probabilities of those K classes at pixels (y, x) (the per-pixel
    renormalisation over them is a constant).
    Returns (labels (H, W) uint8 over q's class axis, fraction of pixels computed).
    """
    height, width = image.shape[:2]
    h, w, num = q.shape
    low = q.argmax(axis=2).astype(np.uint8)
    labels = low[_nearest_cell(height, h)[:, None], _nearest_cell(width, w)[None, :]]
    if h < 2 or w < 2:
        return labels, 0.0
    # continuous low-res coordinate of every full-res row / column (cv2.INTER_AREA's centres)
    fy_all = ((np.arange(height) + 0.5) * (h / height) - 0.5).astype(np.float32)
    fx_all = ((np.arange(width) + 0.5) * (w / width) - 0.5).astype(np.float32)
    y0_all = np.clip(np.floor(fy_all).astype(np.int32), 0, h - 2)  # top-left cell of the 2x2 block
    x0_all = np.clip(np.floor(fx_all).astype(np.int32), 0, w - 2)
    top = low[:-1, :-1]
    mixed = (top != low[1:, :-1]) | (top != low[:-1, 1:]) | (top != low[1:, 1:])  # (h-1, w-1) blocks
    message = np.log(np.maximum(q, 1e-12)) - np.log(np.maximum(small_probs, UNARY_CLIP))
    message = message.reshape(h * w, num)
    inv_2s2 = np.float32(1.0 / (2.0 * srgb * srgb))
    small = small_rgb.astype(np.float32).reshape(h * w, 3)
    band = 0
    rows = max(1, _JBU_CHUNK // width)  # a block of rows at a time: band indices stay small
    for r0 in range(0, height, rows):
        y, x = np.nonzero(mixed[y0_all[r0 : r0 + rows, None], x0_all[None, :]])
        if len(y) == 0:
            continue
        y += r0
        band += len(y)
        fy, fx, y0, x0 = fy_all[y], fx_all[x], y0_all[y], x0_all[x]
        rgb = image[y, x].astype(np.float32)
        acc = np.zeros((len(y), num), np.float32)
        wsum = np.zeros(len(y), np.float32)
        for dy in (0, 1):
            ddy = (y0 + dy - fy) ** 2
            for dx in (0, 1):
                j = (y0 + dy) * w + (x0 + dx)
                c2 = ((small[j] - rgb) ** 2).sum(axis=1)
                wt = np.exp(-0.5 * (ddy + (x0 + dx - fx) ** 2) - c2 * inv_2s2)
                acc += wt[:, None] * message[j]
                wsum += wt
        acc /= np.maximum(wsum, 1e-30)[:, None]
        acc += np.log(np.maximum(gather(y, x), UNARY_CLIP))
        labels[y, x] = acc.argmax(axis=1)
    return labels, band / (height * width)


def refine(
    probs: np.ndarray, image: np.ndarray, params: CRFParams | None = None, runner: Runner | None = None
) -> CRFResult:
    """Fast dense-CRF refinement: labels (H, W) uint8 from probabilities (H, W, C) and RGB image.

    See the module docstring for the three steps and why they preserve the baseline's answer.
    ``runner(fn, *args)`` runs the native mean field (pydensecrf); infer passes
    ``segops.core.isolation.call`` so a crash there costs one image. Its inputs are the
    reduced CRF grid (at most ~``target_pixels`` x classes floats), so crossing into the
    isolated process is cheap. The example (it needs pydensecrf and OpenCV, so the tests do not
    run it): two classes, left and right, on an image with an edge between them; the image is
    small enough for the full-resolution grid (``scale`` 1).

    Example:
        >>> import numpy as np  # doctest: +SKIP
        >>> probs = np.full((64, 128, 19), 0.01, np.float32)  # doctest: +SKIP
        >>> probs[:, :64, 0] = probs[:, 64:, 13] = 0.82  # doctest: +SKIP
        >>> image = np.zeros((64, 128, 3), np.uint8)  # doctest: +SKIP
        >>> image[:, 64:] = 200  # doctest: +SKIP
        >>> result = refine(probs, image)  # doctest: +SKIP
        >>> np.unique(result.labels), result.labels.shape  # doctest: +SKIP
        (array([ 0, 13], dtype=uint8), (64, 128))
        >>> result.scale  # doctest: +SKIP
        1
    """
    params = (params or CRFParams()).for_height(probs.shape[0])
    _check_inputs(probs, image)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    height, width, num_classes = probs.shape
    top_k = probs if isinstance(probs, TopK) else None
    probs = probs if top_k is not None else np.asarray(probs, dtype=np.float32)

    scale = min(params.scale_for(height, width), height, width)
    h, w = max(1, round(height / scale)), max(1, round(width / scale))
    if top_k is not None:  # a tiled image: one class plane at a time, never the full (H, W, C)
        small = np.zeros((h, w, num_classes), np.float32)
        for c in top_k.classes():
            small[..., c] = top_k.area_downsample(int(c), h, w) if scale > 1 else top_k.class_map(int(c))
        small_rgb = _area_downsample(image, h, w) if scale > 1 else image
    elif scale > 1:
        small = _area_downsample(probs, h, w)
        small_rgb = _area_downsample(image, h, w)
    else:
        small, small_rgb = probs, image
    timings["downsample_ms"] = (time.perf_counter() - t0) * 1e3

    # "No mass" is judged on the CRF grid: area averaging lowers an isolated peak by at most
    # 1/scale^2, and a class that weak cannot win a pixel there either.
    t = time.perf_counter()
    peak = small.reshape(-1, num_classes).max(axis=0)
    classes = np.flatnonzero(peak >= params.min_class_prob) if params.min_class_prob > 0 else np.arange(num_classes)
    if len(classes) == 0:  # degenerate input (all-zero rows): keep the single best class
        classes = np.array([int(peak.argmax())])
    if len(classes) == 1:
        labels = np.full((height, width), classes[0], np.uint8)
        timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        return CRFResult(labels, scale, classes, 0.0, timings)
    # No renormalisation over the kept classes: it would add the same constant to every class's
    # unary at a pixel, which mean field (a softmax per pixel) and argmax ignore.
    sub = small if len(classes) == num_classes else np.ascontiguousarray(small[..., classes])
    timings["select_ms"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    q = runner(_mean_field, sub, small_rgb, params, scale) if runner else _mean_field(sub, small_rgb, params, scale)
    timings["mean_field_ms"] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    if scale == 1:
        labels, band_fraction = q.argmax(axis=2).astype(np.uint8), 0.0
    else:
        if top_k is not None:
            gather = functools.partial(top_k.gather, classes=classes)
        elif len(classes) == num_classes:
            gather = lambda y, x: probs[y, x]  # noqa: E731
        else:
            gather = lambda y, x: probs[y, x][:, classes]  # noqa: E731
        labels, band_fraction = _upsample_labels(q, sub, gather, small_rgb, image, params.bilateral_srgb)
    labels = classes.astype(np.uint8)[labels]
    timings["upsample_ms"] = (time.perf_counter() - t) * 1e3
    timings["total_ms"] = (time.perf_counter() - t0) * 1e3
    return CRFResult(labels, scale, classes, band_fraction, timings)


def full_resolution(params: CRFParams) -> CRFParams:
    """The same settings with the fast path switched off (full resolution, every class)."""
    return replace(params, scale=1, min_class_prob=0.0)
