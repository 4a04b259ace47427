"""The isolated helper process (segops.core.isolation) and the decode stage's batches over it
(segops.inference.decoding.DecodeBatcher): a native crash on one input of a batch costs that
input only, the helper is reused across calls and replaced after a crash."""

from __future__ import annotations

import os

import numpy as np
import pytest

from segops.core import imageio, isolation
from segops.inference import decoding
from segops.inference.decoding import DecodeBatcher, EncodedInputs, decode_pair
from segops.inference.discovery import WorkItem

MAX_PIXELS = 1 << 24


def _png(seed: int, h: int = 8, w: int = 16) -> bytes:
    return imageio.encode_png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _inputs(name: str, data: bytes) -> EncodedInputs:
    item = WorkItem(path=f"/archive/{name}", rel=name, size=len(data), mtime=0.0)
    height, width = imageio.image_size(data)
    return EncodedInputs(item, data, None, None, height * width)


def test_one_round_trip_per_batch_pins_the_crash_on_its_input(monkeypatch):
    monkeypatch.setenv(isolation.CRASH_ENV, "decode:crash.png")
    good = [_png(i) for i in range(4)]
    jobs = [("/a/0.png", (good[0], None, MAX_PIXELS)), ("/a/1.png", (good[1], None, MAX_PIXELS)),
            ("/a/crash.png", (good[2], None, MAX_PIXELS)), ("/a/junk.png", (b"junk", None, MAX_PIXELS)),
            ("/a/3.png", (good[3], None, MAX_PIXELS))]  # fmt: skip
    out = isolation.call_each("decode", decode_pair, jobs)
    assert isinstance(out[2], isolation.NativeCrash) and str(out[2]).startswith("crashed in decode")
    assert isinstance(out[3], imageio.BadInput) and "not a PNG or JPEG" in out[3].reason
    for index, data in ((0, good[0]), (1, good[1]), (4, good[3])):
        rgb, label = out[index]
        np.testing.assert_array_equal(rgb, imageio.decode_photo(data, MAX_PIXELS))
        assert label is None and rgb.flags.writeable


def test_helper_is_reused_and_replaced_after_a_crash(monkeypatch):
    first = isolation.call("probe", "/a/x.png", os.getpid)
    assert first != os.getpid()
    assert isolation.call("probe", "/a/y.png", os.getpid) == first  # no process start per call
    assert isolation.call_each("probe", os.getpid, [("/a/z.png", ())] * 3) == [first] * 3
    monkeypatch.setenv(isolation.CRASH_ENV, "probe:boom.png")
    with pytest.raises(isolation.NativeCrash, match="crashed in probe"):
        isolation.call("probe", "/a/boom.png", os.getpid)
    assert isolation.call("probe", "/a/x.png", os.getpid) not in (first, os.getpid())


def test_exceptions_come_back_as_raised():
    with pytest.raises(imageio.BadInput, match="empty file"):
        isolation.call("decode", "/a/empty.png", decode_pair, b"", None, MAX_PIXELS)


def test_batcher_fills_by_count_and_by_pixels_and_keeps_order(monkeypatch):
    monkeypatch.setattr(decoding, "DECODE_BATCH_IMAGES", 3)
    monkeypatch.setattr(decoding, "DECODE_BATCH_PIXELS", 8 * 16 * 4)
    monkeypatch.setenv(isolation.CRASH_ENV, "decode:b.png")
    batcher = DecodeBatcher(MAX_PIXELS)
    assert batcher.add(_inputs("a.png", _png(0)), "a") == []
    assert batcher.add(_inputs("b.png", _png(1)), "b") == []
    full = batcher.add(_inputs("c.png", _png(2)), "c")  # the third image fills the batch
    assert [tag for tag, _ in full] == ["a", "b", "c"]
    assert isinstance(full[1][1], isolation.NativeCrash)
    assert [ex.item.rel for _, ex in (full[0], full[2])] == ["a.png", "c.png"]
    np.testing.assert_array_equal(full[2][1].rgb, imageio.decode_photo(_png(2), MAX_PIXELS))
    big = batcher.add(_inputs("big.png", _png(3, 32, 32)), "big")  # over the pixel budget alone
    assert [tag for tag, _ in big] == ["big"] and big[0][1].rgb.shape == (32, 32, 3)
    assert batcher.add(_inputs("d.png", _png(4)), "d") == []
    rest = batcher.flush()  # the bundle's end
    assert [tag for tag, _ in rest] == ["d"] and batcher.flush() == []
