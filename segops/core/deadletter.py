"""The dead-letter record every stage writes for an input it cannot process, and how it is
written: ``{"path", "stage", "reason"}`` (+ extra keys such as ``split``) as sorted-key JSON
lines in ``OUT/dead_letter.jsonl``, one file rewritten by each run."""

from __future__ import annotations

import json
import re
from typing import Any

TAG = "dead_letter"  # the Beam output tag of dead letters in every pipeline

# The stage of a dead letter: where its input failed, one name per kind of failure in every
# pipeline (a truncated PNG is DECODE in prepare and in infer).
DISCOVER = "discover"  # prepare's listing: a file the layout cannot pair (image without label, ...)
LIST = "list"  # infer's listing: a listed path that cannot be an input
READ = "read"  # the file could not be read
DECODE = "decode"  # the image is not a usable PNG/JPEG (header, chunks, decoder, a decoder crash)
LABEL = "label"  # the ground truth (labelIds) file
INSTANCES = "instances"  # prepare: the instanceIds file of the weight maps
INFERENCE = "inference"  # the model call
CRF = "crf"  # the dense CRF
WRITE = "write"  # writing the image's outputs
STAGES = (DISCOVER, LIST, READ, DECODE, LABEL, INSTANCES, INFERENCE, CRF, WRITE)

# object addresses in exception texts ("<BytesIO object at 0x7f..>") would make reruns differ
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def record(path: str, stage: str, reason: str, **extra: str) -> dict[str, str]:
    """One dead letter; ``reason`` is made reproducible (object addresses removed)."""
    return {"path": path, "stage": stage, "reason": _ADDRESS.sub("", reason), **extra}


def tagged(path: str, stage: str, reason: str, **extra: str) -> Any:
    """:func:`record` as a Beam tagged output of a DoFn."""
    import apache_beam as beam

    return beam.pvalue.TaggedOutput(TAG, record(path, stage, reason, **extra))


def to_line(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)


def reason_kind(reason: str) -> str:
    """A reason without its specifics (numbers, paths), to count dead letters by kind."""
    head = reason.split(":")[0].split(" (")[0]
    return re.sub(r"\d+", "N", head).strip()


def count(path: str) -> int:
    """Dead letters in a dead-letter file (0 when there is none)."""
    from segops.core.fs import read_bytes

    try:
        return sum(1 for line in read_bytes(path).decode().splitlines() if line.strip())
    except OSError:
        return 0
