"""The results table of `segops infer`: a Delta Lake table at OUT/results with one row per
(image, model), and its lifecycle around a run. The row format is segops.inference.rows.

A run follows a two-call protocol, each call safe to be killed at any moment:

* :func:`begin_run` before the pipeline: refuse an old layout, create the (empty) table if there
  is none, remove what an earlier, killed attempt of this run id staged and what runs killed
  more than a day ago left; returns the table version the run plans against. Workers then read
  the (path, fingerprint) index of one model at that version (:func:`index_files`,
  :func:`read_index`) without the driver touching rows, and stage the run's rows as Parquet
  under :func:`staging_dir`.
* :func:`commit_run` after it: the run's one transaction. It MERGEs the staged rows on
  (path, model_id), so a row an image already had is replaced, never duplicated, then removes
  the staging. Delta's optimistic concurrency makes an overlapping run's commit fail when
  another added rows first; it is retried on the new version (MERGE is idempotent on the key), so
  two runs into one OUT end with one row per (image, model). A commit that fails leaves the
  staging for the next :func:`begin_run` of the run id (or the stale clean-up) to remove.

Readers: :func:`open_table` (optionally as of a version, a run id or a time) and
:func:`read_metrics`; every committing run is a table version.

The table records its label set (the classes of its per-class columns and CxC matrices) in its
description, written at creation (:func:`table_label_set`; Cityscapes for tables from before);
:func:`begin_run` refuses a model of another label set before any work.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from segops.core import fs, layout, storage
from segops.core.label_sets import LabelSet, LabelSetError, cityscapes, recorded_label_set
from segops.inference.rows import metrics_schema

LOG = logging.getLogger(__name__)

KEY_COLUMNS = ("path", "model_id")  # one row per (image, model): the MERGE's key
MERGE_PREDICATE = " AND ".join(f"t.{c} = s.{c}" for c in KEY_COLUMNS)
FINGERPRINT_COLUMNS = ("input_size", "input_mtime")
RUN_ID_PROPERTY = "segops.run_id"  # commit metadata: which run wrote a table version
LABEL_SET_KEY = "segops.label_set"  # in the table's description (JSON): its LabelSet.to_json()
COMMIT_ATTEMPTS = 20  # concurrent runs into one OUT retry their MERGE on the new version
INDEX_BATCH_ROWS = 65536
STALE_STAGING_SECONDS = 86400.0  # a run's staged rows older than this belong to a killed run


class TableError(RuntimeError):
    """The results table cannot be used as it is (old layout, failed commit); says what to do."""


# --------------------------------------------------------------------------------------------
# where the table and a run's staged rows live


def model_filter(model_id: str) -> Any:
    """Dataset filter for one model's rows (delta-rs may store strings as string_view: cast)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    return ds.field("model_id").cast(pa.string()) == model_id


def rows_dataset(data_files: list[str], label_set: LabelSet | None = None) -> Any:
    """A pyarrow dataset over the table's data files read with :func:`metrics_schema` of the
    table's ``label_set`` (delta-rs writes strings as string_view, which pyarrow's filter kernels
    do not take), local or on object storage (:func:`segops.core.storage.arrow_paths`)."""
    import pyarrow.dataset as ds

    filesystem, paths = storage.arrow_paths(data_files)
    return ds.dataset(paths, format="parquet", schema=metrics_schema(label_set), filesystem=filesystem)


def table_label_set(dt: Any) -> LabelSet:
    """The label set a results table (``deltalake.DeltaTable``) records; Cityscapes when it
    records none (tables from before label sets)."""
    description = dt.metadata().description
    try:
        record = json.loads(description)[LABEL_SET_KEY] if description else None
    except (ValueError, TypeError, KeyError):
        record = None
    try:
        return recorded_label_set(record, f"{layout.RESULTS_TABLE}/ description")
    except LabelSetError as exc:
        raise TableError(str(exc)) from exc


def table_uri(output: str) -> str:
    return fs.join(output, layout.RESULTS_TABLE)


def staging_dir(output: str, run_id: str) -> str:
    """Where this run's workers write their Parquet rows before the commit."""
    return fs.join(output, layout.STAGING_DIR, run_id)


def _check_layout(output: str) -> None:
    """Refuse an OUT written by segops < 0.2 (Parquet partitions, no transaction log)."""
    old = fs.join(output, layout.LEGACY_METRICS_DIR)
    if fs.match(fs.join(old, "**")):
        raise TableError(
            f"{output} holds results in the old layout ({layout.LEGACY_METRICS_DIR}/, plain Parquet "
            f"partitions). segops now keeps them in a Delta Lake table ({layout.RESULTS_TABLE}/). "
            f"Write to a new OUT, or move {old} aside: the next run then redoes every image into the new table."
        )


def _storage_uri(output: str) -> str:
    uri = table_uri(output)
    return uri if fs.has_scheme(uri) else fs.normalise(uri)


def _delta_table(uri: str, version: int | None = None) -> Any:
    """``deltalake.DeltaTable`` at ``uri`` with the storage options of :mod:`segops.core.storage`."""
    from deltalake import DeltaTable

    return DeltaTable(uri, version=version, storage_options=storage.delta_storage_options(uri))


def _is_table(uri: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(uri, storage_options=storage.delta_storage_options(uri))


def ensure_table(output: str, label_set: LabelSet | None = None) -> int:
    """Create the (empty) results table of ``label_set``'s classes (Cityscapes when None) if
    there is none; returns its current version."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError, DeltaError

    uri = _storage_uri(output)
    ls = label_set or cityscapes()
    description = json.dumps({LABEL_SET_KEY: ls.to_json()}, separators=(",", ":"))
    for _ in range(COMMIT_ATTEMPTS):
        if _is_table(uri):
            return _delta_table(uri).version()
        with contextlib.suppress(CommitFailedError, DeltaError):  # created concurrently: read it
            DeltaTable.create(uri, schema=metrics_schema(ls), mode="ignore", name="segops_results",
                              description=description, storage_options=storage.delta_storage_options(uri))  # fmt: skip
    return _delta_table(uri).version()


def open_table(output: str, version: int | None = None, run_id: str | None = None,
               as_of: datetime.datetime | str | None = None) -> Any:  # fmt: skip
    """The results table (``deltalake.DeltaTable``): the latest version, or as of a ``version``,
    the version a ``run_id`` committed, or a point in time ``as_of`` (time travel)."""
    uri = _storage_uri(output)
    if not _is_table(uri):
        raise TableError(f"{output} has no results table ({layout.RESULTS_TABLE}/): run `segops infer` first")
    dt = _delta_table(uri)
    if run_id is not None:
        version = version_of_run(dt, run_id)
    if version is not None:
        dt.load_as_version(version)
    elif as_of is not None:
        dt.load_as_version(as_of)
    return dt


def version_of_run(dt: Any, run_id: str) -> int:
    """The table version that run ``run_id`` committed."""
    for entry in dt.history():
        if entry.get(RUN_ID_PROPERTY) == run_id:
            return int(entry["version"])
    raise TableError(f"no table version was committed by run {run_id!r}")


def read_metrics(output: str, columns: list[str] | None = None, model_id: str | None = None) -> Any:
    """The rows (optionally of one model) as a pyarrow Table; empty (with the schema) when there
    is no table yet. Loads them all: for archive-sized tables scan :func:`open_table` instead."""
    uri = _storage_uri(output)
    if not _is_table(uri):
        schema = metrics_schema()
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    dt = _delta_table(uri)
    dataset = rows_dataset(dt.file_uris(), table_label_set(dt))
    wanted = model_filter(model_id) if model_id is not None else None
    return dataset.to_table(columns=columns, filter=wanted)


# --------------------------------------------------------------------------------------------
# the index of done images, read on workers


def index_files(output: str, version: int) -> list[str]:
    """Data files of the table at ``version`` (runs on a worker: reads only the log)."""
    return list(_delta_table(_storage_uri(output), version=version).file_uris())


def read_index(data_file: str, model_id: str) -> list[tuple[str, tuple[int | None, float | None]]]:
    """(path, (input_size, input_mtime)) of ``model_id``'s rows in one data file."""
    dataset = rows_dataset([data_file])
    out: list[tuple[str, tuple[int | None, float | None]]] = []
    for batch in dataset.to_batches(columns=["path", *FINGERPRINT_COLUMNS], filter=model_filter(model_id),
                                    batch_size=INDEX_BATCH_ROWS):  # fmt: skip
        paths, sizes, mtimes = (batch.column(c).to_pylist() for c in ("path", *FINGERPRINT_COLUMNS))
        out.extend(zip(paths, zip(sizes, mtimes, strict=True), strict=True))
    return out


# --------------------------------------------------------------------------------------------
# a run: begin_run before the pipeline, commit_run after it


def begin_run(output: str, run_id: str, label_set: LabelSet | None = None) -> int:
    """Make OUT ready for run ``run_id`` of a model of ``label_set`` (Cityscapes when None);
    returns the table version the run plans against. TableError, before anything is written,
    when the table holds another label set's rows."""
    _check_layout(output)
    storage.check_safe_commits(output)  # on S3: conditional writes or a locking provider, else refused
    ls = label_set or cityscapes()
    version = ensure_table(output, ls)
    check_label_set(output, ls)
    _remove_staging(output, run_id)  # a killed earlier attempt of this run id: its rows are redone
    remove_stale_staging(output)
    return version


def check_label_set(output: str, label_set: LabelSet) -> None:
    """TableError when OUT's results table records another label set than ``label_set``."""
    found = table_label_set(_delta_table(_storage_uri(output)))
    if found.digest != label_set.digest:
        raise TableError(
            f"{output}: its results table holds rows of label set {found.name!r} ({found.num_classes} classes, "
            f"digest {found.digest}); this model predicts label set {label_set.name!r} ({label_set.num_classes} "
            f"classes, digest {label_set.digest}): write to another OUT"
        )


@dataclass
class CommitResult:
    version: int | None  # the table version this run committed (None: nothing to commit)
    rows: int  # rows this run wrote (new images and redone ones)
    replaced: int  # earlier rows of the same (image, model) it replaced


def commit_run(output: str, run_id: str, model_id: str, label_set: LabelSet | None = None) -> CommitResult:
    """MERGE this run's staged rows into the table in one transaction (retried on conflicts),
    then remove its staging. Killed before the MERGE lands, the run committed nothing and its
    rerun redoes the images; killed after, the staging left is removed by the next begin_run of
    the run id or, a day later, by any run's (staged rows are never committed twice)."""
    committed = _merge_staged(output, run_id, model_id, label_set)
    _remove_staging(output, run_id)
    return committed


def _staged_rows(output: str, run_id: str, label_set: LabelSet | None) -> Any:
    files = [p for p in fs.match(fs.join(staging_dir(output, run_id), "**")) if p.endswith(".parquet")]
    if not files:
        return metrics_schema(label_set).empty_table()
    return rows_dataset(files, label_set).to_table()


def _merge_staged(output: str, run_id: str, model_id: str, label_set: LabelSet | None) -> CommitResult:
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError

    rows = _staged_rows(output, run_id, label_set)
    if rows.num_rows == 0:
        return CommitResult(None, 0, 0)
    # MERGE refuses two source rows for one key; two attempts of one run id running at once
    # (a scheduler that reuses ids) could stage an image twice
    rows = _last_row_per_key(rows)
    uri = _storage_uri(output)
    props = CommitProperties(custom_metadata={RUN_ID_PROPERTY: run_id, "segops.model_id": model_id})
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        dt = _delta_table(uri)
        try:
            stats = (
                dt.merge(rows, predicate=MERGE_PREDICATE, source_alias="s", target_alias="t",
                         commit_properties=props,
                         merge_schema=True)  # fmt: skip  a table from before a new column gains it
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
        except CommitFailedError as exc:  # another run committed first: MERGE again on its version
            LOG.info("commit of run %s conflicted (%s); retrying on the new version", run_id, exc)
            time.sleep(min(0.2 * attempt, 2.0))
            continue
        dt = _delta_table(uri)
        return CommitResult(dt.version(), rows.num_rows, int(stats.get("num_target_rows_updated", 0)))
    raise TableError(f"could not commit run {run_id} after {COMMIT_ATTEMPTS} attempts (other runs kept "
                     f"committing into {output}); its masks are written: rerun to commit its rows")  # fmt: skip


def _last_row_per_key(rows: Any) -> Any:
    """One row per key (the last staged), should a retried bundle have staged an image twice."""
    import pyarrow as pa

    keys = list(zip(*(rows.column(c).to_pylist() for c in KEY_COLUMNS), strict=True))
    last = {k: i for i, k in enumerate(keys)}
    return rows if len(last) == rows.num_rows else rows.take(pa.array(sorted(last.values())))


def remove_stale_staging(output: str, max_age_s: float = STALE_STAGING_SECONDS) -> list[str]:
    """Remove what runs killed before their commit left, once it is older than ``max_age_s`` (a
    run still in progress keeps writing to its own): their staging directories and the dead-letter
    sink's ``OUT/beam-temp-*`` directories. Age is that of the newest file inside, or of the
    directory itself when it holds none (a run killed early leaves only empty directories)."""
    staging = fs.join(output, layout.STAGING_DIR)
    newest: dict[str, float] = {}

    def seen(directory: str, mtime: float) -> None:
        newest[directory] = max(newest.get(directory, 0.0), mtime)

    for meta in fs.match_metadata(fs.join(staging, "**")):
        seen(fs.join(staging, fs.relpath(meta.path, staging).split("/")[0]), meta.last_updated_in_seconds)
    for meta in fs.match_metadata(fs.join(output, f"{layout.BEAM_TEMP_PREFIX}*", "*")):
        seen(fs.split(meta.path)[0], meta.last_updated_in_seconds)
    if not fs.has_scheme(output):  # local directories exist (and have an age) without files
        import glob
        import os

        for directory in glob.glob(os.path.join(glob.escape(staging), "*")) + glob.glob(
            os.path.join(glob.escape(output), f"{layout.BEAM_TEMP_PREFIX}*")
        ):
            if directory not in newest:  # no file inside: the directory's own age
                with contextlib.suppress(OSError):  # removed by another run meanwhile
                    seen(directory, os.stat(directory).st_mtime)
    stale = sorted(d for d, t in newest.items() if time.time() - t > max_age_s)
    for directory in stale:
        fs.remove_tree(directory)
    return stale


def _remove_staging(output: str, run_id: str) -> None:
    fs.remove_tree(staging_dir(output, run_id))
