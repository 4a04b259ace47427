"""Object storage (``s3://``, ``gs://``) configured in one place, from the user's Beam options and
the standard environment variables, for everything that reaches storage on the launcher and on
workers: Beam's ``FileSystems``, the Delta table (delta-rs storage options), pyarrow reads of
Parquet, and a local copy for what must be opened from disk (a model for onnxruntime or Keras,
TFRecords TensorFlow cannot stream).

Where the configuration comes from: the launcher calls :func:`configure` with the arguments after
``--`` before its first file access; Beam hands the same options to every worker
(``Pipeline.__init__`` in-process, ``sdk_worker_main`` in a worker pool), which sets them on
``FileSystems``; :func:`current_options` reads them back there, so delta-rs and pyarrow on a worker
use what Beam's filesystem uses. Anything not given as an option comes from the standard
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``; ``STORAGE_EMULATOR_HOST`` for a GCS
emulator), read by boto3, delta-rs and Arrow themselves.

What segops changes in Beam's own S3 filesystem (empty objects, one boto3 client per
configuration) is :mod:`segops.core.beam_s3`, installed here and on workers by ``segops/__init__``.

Example:
    >>> from segops.core import storage
    >>> storage.scheme_of("s3://bucket/out/results")
    's3'
    >>> storage.delta_storage_options("/tmp/out") is None
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

from segops.core import beam_s3

S3_OPTION_NAMES = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
                   "s3_region_name", "s3_verify", "s3_disable_ssl")  # fmt: skip
# delta-rs on S3: a commit is safe against a concurrent one only with conditional writes
# (If-None-Match, AWS S3 since 2024, MinIO, R2, moto) or a DynamoDB locking provider
LOCKING_PROVIDER_VARIABLE = "AWS_S3_LOCKING_PROVIDER"
CONDITIONAL_PUT_VARIABLE = "AWS_CONDITIONAL_PUT"
CACHE_VARIABLE = "SEGOPS_CACHE_DIR"


class StorageError(RuntimeError):
    """Object storage cannot be used as configured (no credentials, no bucket, no permission, a
    wrong endpoint, a store without safe commits); the message names the path and what to set."""


def scheme_of(path: str) -> str:
    """``'s3'``, ``'gs'``, ... of a URI; ``''`` for a local path."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", path)
    return match.group(1).lower() if match else ""


# --------------------------------------------------------------------------------------------
# Beam FileSystems: the options every file access of the launcher and the workers uses


def configure(beam_args: Iterable[str] = ()) -> Any:
    """Give Beam's ``FileSystems`` the user's pipeline options (the arguments after ``--``) before
    the launcher's first file access; returns the ``PipelineOptions``. Call again with the same
    arguments is harmless (a command and its pipeline both configure)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    beam_s3.install()
    options = PipelineOptions(list(beam_args))
    FileSystems.set_options(options)
    return options


def ensure_configured() -> None:
    """Configure from the environment alone when nothing has yet (library use, a test)."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems._pipeline_options is None:  # Beam keeps no public getter; None until set
        configure(())


def current_options() -> dict[str, Any]:
    """The S3 options in force (those Beam's filesystem uses here: launcher or worker), without
    the unset ones."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import S3Options

    ensure_configured()
    s3 = FileSystems._pipeline_options.view_as(S3Options)
    return {name: getattr(s3, name) for name in S3_OPTION_NAMES if getattr(s3, name, None) not in (None, False)}


# --------------------------------------------------------------------------------------------
# delta-rs and pyarrow, from the same options


def _endpoint(options: dict[str, Any]) -> str | None:
    return options.get("s3_endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def delta_storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` for the table at ``uri`` (None for a local path: defaults).

    On S3 the commit protocol needs an atomic put-if-absent: conditional writes unless the user
    configured a DynamoDB locking provider (``AWS_S3_LOCKING_PROVIDER=dynamodb``, read by delta-rs
    from the environment). :func:`check_safe_commits` proves the store honours them."""
    scheme = scheme_of(uri)
    if scheme == "s3":
        options = current_options()
        out: dict[str, str] = {}
        for name, key in (("s3_access_key_id", "AWS_ACCESS_KEY_ID"), ("s3_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                          ("s3_session_token", "AWS_SESSION_TOKEN"), ("s3_region_name", "AWS_REGION")):  # fmt: skip
            if options.get(name):
                out[key] = str(options[name])
        if "AWS_REGION" not in out and not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            out["AWS_REGION"] = "us-east-1"  # boto3's default; delta-rs has none
        endpoint = _endpoint(options)
        if endpoint:
            out["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                out["AWS_ALLOW_HTTP"] = "true"
        if not os.environ.get(LOCKING_PROVIDER_VARIABLE):
            out["conditional_put"] = os.environ.get(CONDITIONAL_PUT_VARIABLE, "etag")
        return out
    if scheme == "gs":
        # delta-rs reads GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT itself; it cannot
        # be pointed at a GCS emulator (object_store speaks GCS's XML API; docs/cluster.md)
        return {}
    return None


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """A pyarrow filesystem for ``uri`` configured like Beam's, and the path to give it."""
    import pyarrow.fs as pafs

    scheme = scheme_of(uri)
    if scheme == "s3":
        options = current_options()
        kwargs: dict[str, Any] = {}
        endpoint = _endpoint(options)
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "http" if endpoint.startswith("http://") else "https"
        if options.get("s3_access_key_id"):
            kwargs["access_key"] = options["s3_access_key_id"]
            kwargs["secret_key"] = options.get("s3_secret_access_key")
            kwargs["session_token"] = options.get("s3_session_token")
        region = options.get("s3_region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs["region"] = region or "us-east-1"
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :]
    if scheme == "gs":
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        gcs = pafs.GcsFileSystem(endpoint_override=host.split("://")[-1], scheme="http", anonymous=True) if host \
            else pafs.GcsFileSystem()  # fmt: skip
        return gcs, uri[len("gs://") :]
    if scheme:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def arrow_paths(paths: list[str]) -> tuple[Any, list[str]]:
    """One pyarrow filesystem for ``paths`` (all of one store) and the paths to give it."""
    if not paths:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), []
    filesystem, _ = arrow_filesystem(paths[0])
    return filesystem, [arrow_filesystem(p)[1] for p in paths]


# --------------------------------------------------------------------------------------------
# local copies of what must be opened from disk


def cache_dir() -> str:
    return os.environ.get(CACHE_VARIABLE) or os.path.join(tempfile.gettempdir(), "segops-cache")


def local_copy(uri: str, companions: tuple[str, ...] = ()) -> str:
    """A local copy of the file or directory tree at ``uri`` (itself when local), in a cache keyed
    by the URI and the listed sizes and update times, so a worker copies a model once and a
    changed object is copied anew. For a file, ``companions`` (suffixes such as ``.card.json``,
    or sibling names such as ``/card.json``... given as ``"+.card.json"`` / ``"card.json"``) are
    copied beside it when they exist. The copy is complete or absent (renamed into place)."""
    if not scheme_of(uri):
        return uri
    from apache_beam.io.filesystems import FileSystems

    ensure_configured()
    root = uri.rstrip("/")
    (single,) = FileSystems.match([root])
    files = [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in single.metadata_list if m.path == root]
    is_file = bool(files)
    parent, name = root.rsplit("/", 1)
    if is_file:
        wanted = [root + c[1:] if c.startswith("+") else f"{parent}/{c}" for c in companions]
        for path in wanted:
            (found,) = FileSystems.match([path])
            files += [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in found.metadata_list if m.path == path]
    else:
        (tree,) = FileSystems.match([root + "/**"])
        files = [(m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in tree.metadata_list]
    if not files:
        raise FileNotFoundError(f"nothing at {uri}")
    key = hashlib.sha256(repr((root, sorted(files))).encode()).hexdigest()[:20]
    target = os.path.join(cache_dir(), key, name)
    if os.path.exists(target):
        return target
    staging = tempfile.mkdtemp(prefix=f"{key}.", dir=_make_dirs(cache_dir()))
    base = parent if is_file else root
    for path, _, _ in files:
        relative = path[len(base) + 1 :] if is_file else os.path.join(name, path[len(root) + 1 :])
        destination = os.path.join(staging, relative)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with FileSystems.open(path, compression_type="uncompressed") as src, open(destination, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    try:
        os.rename(staging, os.path.join(cache_dir(), key))
    except OSError:  # another process finished the same copy first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def _make_dirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# checks that turn a misconfiguration into one line


def s3_client(quick: bool = False) -> Any:
    """A boto3 S3 client configured as Beam's is; ``quick``: a few seconds to connect and no
    retries (a check must fail at once on a wrong endpoint, where Beam's client retries for minutes)."""
    import boto3
    from botocore.config import Config

    options = current_options()
    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 1}) if quick else None
    return boto3.session.Session().client(
        "s3", endpoint_url=_endpoint(options), region_name=options.get("s3_region_name"),
        aws_access_key_id=options.get("s3_access_key_id"), aws_secret_access_key=options.get("s3_secret_access_key"),
        aws_session_token=options.get("s3_session_token"), verify=options.get("s3_verify"), config=config,
    )  # fmt: skip


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key.rstrip("/")


def _probe_key(prefix: str, what: str) -> str:
    return f"{prefix}/.segops-{what}-probe-{hashlib.sha1(os.urandom(8)).hexdigest()[:12]}".lstrip("/")


def check_access(uri: str, write: bool) -> None:
    """StorageError naming ``uri`` and what to set when its bucket cannot be listed (or, with
    ``write``, written): no credentials, no such bucket, no permission, a wrong endpoint. Fails in
    seconds; leaves nothing behind. Local paths are not checked here."""
    scheme = scheme_of(uri)
    if not scheme:
        return
    if scheme != "s3":
        return _check_access_through_beam(uri, write)
    bucket, prefix = _bucket_key(uri)
    client = s3_client(quick=True)
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if write:
            key = _probe_key(prefix, "write")
            client.put_object(Bucket=bucket, Key=key, Body=b"probe")
            client.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore's ClientError, NoCredentialsError, EndpointConnectionError...
        raise StorageError(explain(uri, exc)) from exc


def _check_access_through_beam(uri: str, write: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    ensure_configured()
    probe = _probe_key(uri.rstrip("/"), "write")
    logging.disable(logging.ERROR)  # Beam's clients log a traceback before raising; we say it in one line
    try:
        FileSystems.match([uri.rstrip("/") + "/*"])
        if write:
            with FileSystems.create(probe) as f:
                f.write(b"probe")
            FileSystems.delete([probe])
    except Exception as exc:  # Beam wraps the client's error in BeamIOError with its text
        raise StorageError(explain(uri, exc)) from exc
    finally:
        logging.disable(logging.NOTSET)


def explain(uri: str, exc: BaseException) -> str:
    """One line saying why ``uri`` could not be reached and what to set."""
    text = f"{type(exc).__name__}: {exc}"
    scheme = scheme_of(uri)
    hints = {
        "s3": "pass --s3_endpoint_url/--s3_region_name/--s3_access_key_id/--s3_secret_access_key after `--`, "
              "or set AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "gs": "set GOOGLE_APPLICATION_CREDENTIALS (or STORAGE_EMULATOR_HOST for an emulator) and check the bucket",
    }  # fmt: skip
    if re.search(r"NoSuchBucket|bucket does not exist|404", text):
        reason = "the bucket does not exist"
    elif re.search(r"NoCredentials|Unable to locate credentials|InvalidAccessKeyId|SignatureDoesNotMatch|"
                   r"credentials", text, re.IGNORECASE):  # fmt: skip
        reason = "no valid credentials"
    elif re.search(r"AccessDenied|Forbidden|403", text):
        reason = "permission denied"
    elif re.search(r"Could not connect|Connection refused|EndpointConnectionError|Name or service not known|"
                   r"timed out", text, re.IGNORECASE):  # fmt: skip
        reason = "the endpoint cannot be reached"
    else:
        reason = text.splitlines()[0][:300] if text else "unknown error"
    return f"cannot use {uri}: {reason}; {hints.get(scheme, 'check the URI and its credentials')}"


def check_safe_commits(uri: str) -> None:
    """StorageError unless concurrent commits to the Delta table at ``uri`` are safe: on S3 without
    a locking provider, the store must refuse a second put-if-absent of one key (checked with a
    probe object, then removed)."""
    if scheme_of(uri) != "s3" or os.environ.get(LOCKING_PROVIDER_VARIABLE):
        return
    from botocore.exceptions import ClientError

    client = s3_client(quick=True)
    bucket, prefix = _bucket_key(uri)
    key = _probe_key(prefix, "conditional-put")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return
            raise
        raise StorageError(
            f"cannot commit safely to {uri}: the store accepted a second conditional write of one object, so two "
            f"runs could overwrite each other's table version; configure a DynamoDB locking provider "
            f"({LOCKING_PROVIDER_VARIABLE}=dynamodb, DELTA_DYNAMO_TABLE_NAME; docs/scheduled.md) or use a store "
            f"with S3 conditional writes"
        )
    except ClientError as exc:
        raise StorageError(explain(uri, exc)) from exc
    finally:
        with contextlib.suppress(Exception):  # the probe may not exist; never mask the real outcome
            client.delete_object(Bucket=bucket, Key=key)
