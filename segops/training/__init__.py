"""``segops train``: from a prepared directory to exported models.

    options.py         TrainOptions and its parts (model, optimisation, augmentation, data), choices
    prepared.py        checks and reads of the prepared directory: shards, class weights, image size
    input_pipeline.py  tf.data over the shards: reading, augmentation, batches
    losses/            the loss-term registry (spec.py); CE, focal, OHEM, Dice, Jaccard, Lovász (terms/);
                       their weighted sum by name (total.py)
    metrics.py         Keras streaming confusion matrix, mean IoU, mean Dice
    devices.py         precision, dtype policy, tf.distribute strategy, worker info
    state.py           history, checkpoints, state.json; resume checks
    callbacks.py       per-epoch callbacks (per-class IoU, checkpoint, TensorBoard)
    loop.py            train(): plan, build or load, fit, summarise, export

The package imports nothing heavy itself: ``segops.training.options`` loads without TensorFlow
(the export directory format is :mod:`segops.models.export_dir`).
"""
