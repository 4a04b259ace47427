"""The loss terms of ``--loss``, one or more per module: every module of this package is imported
by :func:`segops.training.losses.spec.registry`, and each registers its terms with
:func:`~segops.training.losses.spec.loss_term` (a new term is a new module here, see
docs/train.md, "Adding a loss"). Term modules import without Keras: they compute with
:data:`segops.training.losses.targets.ops`.
"""
