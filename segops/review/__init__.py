"""`segops review`: closing the relabeling loop. ``select`` picks the images a person should
check from the results table of `segops infer`; ``export`` writes them, with the prediction as a
pre-annotation, as Label Studio tasks (brush RLE) and COCO RLE (CVAT and others); ``labelimport``
reads the corrected masks back as Cityscapes ``gtFine`` labelIds PNGs for `segops prepare`.
``brush`` owns Label Studio's mask encoding. docs/review.md is the recipe."""

from __future__ import annotations


class ReviewError(ValueError):
    """A review step that cannot go on as asked; the message says what to fix."""
