"""segops: raw Cityscapes-style images to trained segmentation models and relabelled archives."""

import sys

from segops.core.runtime import prefer_onednn

__version__ = "0.1.0"

prefer_onednn()  # before anything imports TensorFlow (segops.core.runtime says why)

if "apache_beam" in sys.modules:
    # a Beam worker unpickling segops code: its S3 sinks may write empty objects, which Beam's
    # own writer cannot, and each file operation would build a boto3 client (segops.core.beam_s3);
    # the launcher installs these when it configures storage
    from segops.core import beam_s3

    beam_s3.install()
