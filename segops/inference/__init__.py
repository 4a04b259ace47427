"""`segops infer`'s stage: everything it does that is not Beam plumbing (workflows/infer.py).

Modules, in the order an image meets them:

* :mod:`~segops.inference.options`: :class:`InferOptions` (frozen, validated) and the
  :class:`PredictOptions` a later stage (the report) rebuilds from a run's manifest.
* :mod:`~segops.inference.discovery`: input images, their relative paths and ground truth.
* :mod:`~segops.inference.decoding`: reading and validating images (+ ground truth); :mod:`~segops.inference.stage_values`: the values passed between stages.
* :mod:`~segops.inference.tiling`: padding, tiling and batching images of any size through a model.
* :mod:`~segops.inference.model`: the served model, the Beam ``ModelHandler`` and a predictor.
* :mod:`~segops.inference.crf`: dense-CRF refinement.
* :mod:`~segops.inference.masks`: mask encoding and the mask file layout.
* :mod:`~segops.inference.table`: the results table (one row per image and model).
* :mod:`~segops.inference.summary`: the dataset summary (summary.json).
* :mod:`~segops.inference.run_record`: the end-of-run report and the run manifest.
"""
