"""The built-in procedural street-scene dataset, written in the exact Cityscapes layout.

Real Cityscapes needs a registration and an 11 GB download; this generator writes a small
dataset that every segops stage reads exactly as it reads the real one::

    OUT/leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png     8-bit RGB
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png      8-bit labelIds
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_instanceIds.png   16-bit
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_color.png         RGB colours
    OUT/gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_polygons.json     polygons
    OUT/segops_synth.json                                                      what made it

Scenes are built in 3-D (a pinhole camera ~1.25 m above a street: road in perspective,
sidewalks, building façades with windows, trees, poles with signs and traffic lights, parked and
driving cars, trucks, buses, trams, persons, riders on bicycles and motorcycles, walls, fences,
void objects, the ego-vehicle hood) and projected to polygons. Each object is one polygon in
``*_gtFine_polygons.json`` (official schema: ``imgHeight``, ``imgWidth``, ``objects`` with
``label`` and ``polygon``), in painter's order, far to near. The labelIds PNG is the
rasterisation of exactly those polygons, in that order, with OpenCV's ``fillPoly`` (on a grid of
several sub-rows per pixel row sampled at pixel centres, which follows Pillow's pixel-centre rule
instead of OpenCV's "every pixel the outline touches"): cityscapesScripts' ``json2labelImg``
reproduces >= 99.8 % of the pixels at 64x128 and ~99.99 % at 1024x2048. instanceIds follow the
Cityscapes encoding: ``labelId * 1000 + k`` (k counts from 0 per class and image) for classes
with instances, the plain labelId elsewhere. The colour PNG is ``LABEL_ID_TO_COLOR[labelIds]``.

The image is painted from the same polygons (its edges match the label edges to within a
pixel), then made harder:
per-image palettes, per-object colours, windows/wheels/markings that are not separate labels,
per-class texture noise, low-frequency shading, a sky gradient, blur, sensor noise and
occlusion. Similar classes (road/sidewalk, building/wall, vegetation/terrain, person/rider) are
separable only partly. Pixel frequencies are imbalanced as in real streets: road, building and
vegetation large; poles, signs and traffic lights small; rider, truck, bus, train and
motorcycle rare. Every labelled image is guaranteed two of the ten rarest classes (chosen by its
index, placed where nothing occludes them), so any train split of 5 or more images contains
them all; the nine common classes appear in nearly every image. All 19 evaluation classes are
therefore present and class weights are finite.

The ``test`` split mimics the real Cityscapes test set: images are present and so are the gtFine
files, but they carry no usable labels: only void ids (0 unlabeled, 1 ego vehicle,
2 rectification border, 3 out of roi), i.e. nothing a metric could be computed on.

Coarse annotations (``coarse=True``, ``segops synth --coarse``): ``OUT/gtCoarse/<split>/<city>/``
holds ``*_gtCoarse_labelIds.png``, ``_instanceIds.png`` (the labelIds: coarse polygons have no
instances), ``_color.png`` and ``_polygons.json`` for train and val (no test, as in the real
download), made from the fine labels by :mod:`.coarse`; a ``train_extra`` count adds images with
gtCoarse files only (``segops synth --train-extra N``). The fine files do not change.

Determinism: each image's random generator is seeded from ``(seed, split, index)`` only, so an
image does not depend on the counts of its own or other splits, and a rerun with the same
options writes byte-identical files. Files are written atomically (temporary name, then rename),
so an interrupted run leaves no half-written file. Files from an earlier run with larger counts
are not deleted.

The package, by concern: :mod:`.palette` (colours and textures), :mod:`.scene` (the camera, the
street layout and the background), :mod:`.objects` (street furniture, vehicles, people),
:mod:`.compose` (where they go, painter's order), :mod:`.render` (rasterising and finishing) and
:mod:`.dataset` (naming, per-image random generators, writing files, the manifest) and
:mod:`.coarse` (gtCoarse labels from the fine ones).
"""

from segops.datasets.synth.compose import build_scene
from segops.datasets.synth.dataset import (
    CITIES,
    COARSE_ONLY_SPLITS,
    COARSE_SPLITS,
    DEFAULT_COUNTS,
    DEFAULT_SIZE,
    FRAME,
    GUARANTEED,
    MAX_PIXELS,
    MIN_SIDE,
    SPLITS,
    TEST_VOID_LABELS,
    SynthOptions,
    frame_stem,
    generate_dataset,
    generate_image,
    image_rng,
)
from segops.datasets.synth.render import Rendered, render
from segops.datasets.synth.scene import Item

__all__ = [
    "CITIES",
    "COARSE_ONLY_SPLITS",
    "COARSE_SPLITS",
    "DEFAULT_COUNTS",
    "DEFAULT_SIZE",
    "FRAME",
    "GUARANTEED",
    "MAX_PIXELS",
    "MIN_SIDE",
    "SPLITS",
    "TEST_VOID_LABELS",
    "Item",
    "Rendered",
    "SynthOptions",
    "build_scene",
    "frame_stem",
    "generate_dataset",
    "generate_image",
    "image_rng",
    "render",
]
