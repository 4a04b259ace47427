"""What segops changes in Beam's S3 filesystem (Beam 2.77), installed on the launcher and on every
worker that imports segops: :func:`install` applies both, idempotently, and is a no-op without
Beam's aws extra.

- **Empty objects**: Beam's S3 writer cannot write one (a multipart upload with no part is
  refused: ``MalformedXML``), and segops writes empty files (a dead-letter file with no bad
  input); the uploader then puts an empty object with a plain PUT.
- **One boto3 client per configuration**: Beam's ``S3FileSystem`` makes a new ``S3IO``, hence a
  new boto3 session and client, for every operation (each ``exists``, ``open``, ``delete``...),
  and building a client parses botocore's service model: about 0.4 s of CPU each on a 2-vCPU
  AMD EPYC VM, 74 times in a three-image ``segops infer``: a run's storage cost grew with its
  file operations, not its bytes (a 12-image run took 4.6x the time it takes with one client:
  docs/benchmarks.md). A boto3 client is thread-safe (boto3's documentation), so the wrapper now
  reuses the one client made for the same settings and keeps only its per-stream state of its own.
"""

from __future__ import annotations

import os
import threading
from typing import Any

# the settings Beam's boto3 wrapper builds its client from (apache_beam/io/aws/clients/s3/boto3_client.py)
_CLIENT_SETTINGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
                    "s3_disable_ssl", "s3_region_name", "s3_api_version", "s3_verify")  # fmt: skip
_clients: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
_clients_lock = threading.Lock()


def install() -> None:
    """Both changes (idempotent)."""
    try:
        from apache_beam.io.aws import s3io
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:  # apache-beam without its aws extra: no s3:// at all
        return
    _install_empty_object_fix(s3io.S3Uploader)
    _install_client_reuse(boto3_client.Client)


def client_settings(options: Any) -> tuple[Any, ...]:
    """What a Beam S3 client is built from: its options (``PipelineOptions`` or a dict, read as
    Beam reads them) and the ``AWS_*`` variables boto3 falls back to for anything unset (an
    endpoint, keys, a region or profile set later in the process gets a client of its own)."""
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    if isinstance(options, PipelineOptions):
        s3 = options.view_as(S3Options)
        given = tuple(getattr(s3, name, None) for name in _CLIENT_SETTINGS)
    else:
        given = tuple(options.get(name) for name in _CLIENT_SETTINGS)
    return given + tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def _install_client_reuse(client_class: Any) -> None:
    if getattr(client_class.__init__, "_segops_shared_client", False):
        return
    original = client_class.__init__

    def __init__(self: Any, options: Any) -> None:
        key = client_settings(options)
        with _clients_lock:
            shared = _clients.get(key)
        if shared is None:
            original(self, options)
            # the wrapper's other attributes are its download state: copied fresh on each reuse
            state = {name: value for name, value in vars(self).items() if name != "client"}
            with _clients_lock:
                _clients.setdefault(key, (self.client, state))
            return
        client, state = shared
        vars(self).update(state)
        self.client = client

    __init__._segops_shared_client = True  # type: ignore[attr-defined]
    client_class.__init__ = __init__


def _install_empty_object_fix(uploader: Any) -> None:
    if getattr(uploader.finish, "_segops_empty_fix", False):
        return
    original = uploader.finish

    def finish(self: Any) -> None:
        if self.parts or self.buffer or self.last_error is not None:
            return original(self)
        client = getattr(self._client, "client", None)  # Beam's boto3 wrapper keeps the boto3 client here
        if client is None:
            return original(self)
        client.abort_multipart_upload(Bucket=self._bucket, Key=self._name, UploadId=self.upload_id)
        client.put_object(Bucket=self._bucket, Key=self._name, Body=b"", ContentType=self._mime_type)

    finish._segops_empty_fix = True  # type: ignore[attr-defined]
    uploader.finish = finish
