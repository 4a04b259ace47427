"""File access for every stage, through Beam's ``FileSystems`` so the same code reads and writes
local paths, ``gs://`` or ``s3://``: joining, matching, whole-file reads, and atomic writes of
bytes and JSON (a temporary sibling renamed into place, so readers never see half a file)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any


def has_scheme(path: str) -> bool:
    return "://" in path


def normalise(path: str) -> str:
    """Absolute local path, or a URL without a trailing slash."""
    return path.rstrip("/") if has_scheme(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base.rstrip("/") or base, *parts)


def split(path: str) -> tuple[str, str]:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.split(path)


def exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


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
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([pattern])
    return list(result.metadata_list)


def match_sized(pattern: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of the files matching ``pattern`` (Beam glob: ``*`` within a path
    component, ``**`` across components), in the filesystem's order."""
    return [(m.path, int(m.size_in_bytes)) for m in match_metadata(pattern)]


def match(pattern: str) -> list[str]:
    """Sorted paths of the files matching ``pattern``."""
    return sorted(path for path, _ in match_sized(pattern))


def delete(paths: list[str]) -> None:
    from apache_beam.io.filesystems import FileSystems

    FileSystems.delete(paths)


def read_bytes(path: str) -> bytes:
    """Whole file contents (local, GCS, S3, HDFS...)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and rename it into place.

    Readers never see a half-written file, and a crashed worker leaves only a ``.tmp-*`` file
    that the next attempt overwrites.
    """
    from apache_beam.io.filesystems import FileSystems

    parent = FileSystems.split(path)[0]
    if parent and not FileSystems.exists(parent):
        with contextlib.suppress(OSError):  # created concurrently by another worker
            FileSystems.mkdirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


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
