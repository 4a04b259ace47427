"""File access for every stage, through Beam's ``FileSystems`` so the same code reads and writes
local paths, ``gs://`` or ``s3://``: joining, matching, whole-file reads, and atomic writes of
bytes and JSON (a temporary sibling renamed into place, so readers never see half a file).
Object-storage credentials and endpoints come from :mod:`segops.core.storage`, configured once."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

from segops.core import storage
from segops.core.layout import ATOMIC_TMP_INFIX, BEAM_TEMP_PREFIX

# errors that say the output cannot be written (space, quota, permissions, read-only), as opposed
# to a bad input: they fail a run with a message naming the path instead of a dead letter per record
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.ENOTDIR})  # fmt: skip


def filesystems() -> Any:
    """Beam's ``FileSystems``, configured (:func:`segops.core.storage.ensure_configured`): without
    options its S3 filesystem cannot even list."""
    from apache_beam.io.filesystems import FileSystems

    storage.ensure_configured()
    return FileSystems


def has_scheme(path: str) -> bool:
    return "://" in path


def normalise(path: str) -> str:
    """Absolute local path, or a URL without a trailing slash."""
    return path.rstrip("/") if has_scheme(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return filesystems().join(base.rstrip("/") or base, *parts)


def split(path: str) -> tuple[str, str]:
    return filesystems().split(path)


def exists(path: str) -> bool:
    return filesystems().exists(path)


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both absolute or both URLs); ValueError when outside it."""
    root = root.rstrip("/") + "/"
    if not path.startswith(root):
        raise ValueError(f"{path} is not under {root}")
    return path[len(root) :]


def is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def match_metadata(pattern: str) -> list[Any]:
    """Beam ``FileMetadata`` (path, size_in_bytes, last_updated_in_seconds) of the files matching
    ``pattern``."""
    (result,) = filesystems().match([pattern])
    return list(result.metadata_list)


def match_sized(pattern: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of the files matching ``pattern`` (Beam glob: ``*`` within a path
    component, ``**`` across components), in the filesystem's order."""
    return [(m.path, int(m.size_in_bytes)) for m in match_metadata(pattern)]


def match(pattern: str) -> list[str]:
    """Sorted paths of the files matching ``pattern``."""
    return sorted(path for path, _ in match_sized(pattern))


def delete(paths: list[str]) -> None:
    filesystems().delete(paths)


def remove_tree(directory: str) -> None:
    """Remove ``directory`` and everything under it; nothing when it is absent. On an object
    store a "directory" is a key prefix: Beam deletes a tree only for a path ending in '/'."""
    target = directory.rstrip("/") + "/" if has_scheme(directory) else directory
    with contextlib.suppress(OSError):  # absent, or removed concurrently
        delete([target])


def read_bytes(path: str) -> bytes:
    """Whole file contents (local, GCS, S3, HDFS...)."""
    with filesystems().open(path, compression_type="uncompressed") as f:
        return f.read()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and rename it into place.

    Readers never see a half-written file. A failed write (full disk, no permission) removes its
    temporary and raises OSError naming ``path``; only a killed worker leaves a ``.tmp-*`` file,
    which :func:`remove_temporaries` clears on the next run.
    """
    FileSystems = filesystems()  # noqa: N806 - Beam's class, configured
    parent = FileSystems.split(path)[0]
    if parent and not FileSystems.exists(parent):
        with contextlib.suppress(OSError):  # created concurrently by another worker
            FileSystems.mkdirs(parent)
    tmp = f"{path}{ATOMIC_TMP_INFIX}{uuid.uuid4().hex}"
    try:
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])
    except Exception as exc:
        with contextlib.suppress(Exception):  # the tmp may not exist (create failed)
            FileSystems.delete([tmp])
        error = write_error(exc)
        if error is not None and error.filename in (None, tmp):  # name the file readers would see
            raise OSError(error.errno, error.strerror, path) from exc
        raise


def check_writable(directory: str) -> None:
    """Fail early, before a stage reads any input, when ``directory`` cannot be written: raises
    OSError naming it when a file is in the way, or it (or the nearest existing parent it would be
    created in) is not writable or on a read-only filesystem; an existing directory also gets a
    probe file written and removed (catches a full disk). Creates nothing. On an object store a
    probe object is written and removed: :class:`segops.core.storage.StorageError` names what to
    set when there are no credentials, no bucket, no permission or no endpoint."""
    if has_scheme(directory):
        storage.check_access(directory, write=True)
        return
    existing = os.path.abspath(directory)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a directory", directory)
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(code, os.strerror(code), directory)
    if existing == os.path.abspath(directory):
        probe = join(directory, f".segops-write-probe{ATOMIC_TMP_INFIX}{uuid.uuid4().hex}")
        write_bytes_atomic(probe, b"probe")
        delete([probe])


def write_error(exc: BaseException) -> OSError | None:
    """The OSError (full disk, quota, permissions, read-only filesystem) behind ``exc``, found in
    its cause/context chain or, for an error a Beam worker re-raised as text, in its message;
    None when ``exc`` is not about writing."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    for code, filename in re.findall(r"\[Errno (\d+)\][^:\]\n]*(?:: '([^'\n]+)')?", str(exc)):
        if int(code) in WRITE_ERRNOS:
            return OSError(int(code), os.strerror(int(code)), filename or None)
    return None


def _temporary_paths(directory: str) -> Iterator[tuple[str, bool]]:
    """(path, is a directory) of leftover files and Beam temp directories, listed through
    FileSystems (an object store has no directories to glob: a prefix exists while a key has it)."""
    yield from ((path, False) for path in match(join(directory, f"*{ATOMIC_TMP_INFIX}*")))
    for path in match(join(directory, f"{BEAM_TEMP_PREFIX}*", "*")):
        yield split(path)[0], True
    if not has_scheme(directory):  # local: an empty Beam temp directory lists no files
        import glob

        yield from ((d, True) for d in glob.glob(os.path.join(directory, f"{BEAM_TEMP_PREFIX}*")))


def remove_temporaries(directories: list[str]) -> list[str]:
    """Remove what killed writers left in ``directories`` (each may be a glob): ``*.tmp-*`` files
    of :func:`write_bytes_atomic` and Beam sinks' ``beam-temp-*`` directories. Only for a stage
    whose output no other run is writing at the same time; returns the paths removed, sorted."""
    found = sorted({entry for d in directories for entry in _temporary_paths(d)})
    for path, is_directory in found:
        if is_directory:
            remove_tree(path)
        else:
            with contextlib.suppress(OSError):
                delete([path])
    return sorted({path for path, _ in found})


def dump_json(data: Any, indent: int | str | None = 2, newline: bool = True) -> bytes:
    """The one JSON encoding of segops' artifacts: strict (NaN refused), newline-terminated
    unless ``newline`` is false (Cityscapes' ``*_gtFine_polygons.json`` files end without one)."""
    return (json.dumps(data, indent=indent, allow_nan=False) + ("\n" if newline else "")).encode()


def write_json_atomic(path: str, data: Any, indent: int | str | None = 2) -> None:
    write_bytes_atomic(path, dump_json(data, indent))


def read_json(path: str) -> Any:
    """Parsed JSON file; raises FileNotFoundError when it is missing and ValueError when it is
    not JSON, so each stage can word the error for its own users."""
    if not exists(path):
        raise FileNotFoundError(path)
    return json.loads(read_bytes(path))


def read_json_or_none(path: str) -> Any | None:
    """Parsed JSON file, or None when it is missing (an optional artifact)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
