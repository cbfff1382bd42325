"""The wire encoding of array groups: safetensors written and read chunk by chunk. What it writes the
safetensors library reads, what the library writes it reads, and malformed or hostile payloads are
refused with a TransportError, never a crash or a wrong array."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load, save

from cohort.channel.grpc.serde import decode, encode
from cohort.core.errors import TransportError

GROUPS = {
    "model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(2.5, np.float64),
              "empty": np.zeros((0, 3), np.float32), "mask": np.array([True, False])},
    "control": {"c": np.arange(7, dtype=np.int64) - 3, "h": np.ones(5, np.float16), "u": np.arange(3, dtype=np.uint8)},
}


def same(a, b):
    assert list(a) == list(b)
    for g in a:
        assert list(a[g]) == list(b[g])  # the order of names is kept
        for k in a[g]:
            assert a[g][k].dtype == b[g][k].dtype and a[g][k].shape == b[g][k].shape
            assert a[g][k].tobytes() == b[g][k].tobytes()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1024, 2**20])
def test_groups_survive_any_chunk_size_and_the_library_reads_the_payload(chunk):
    total, pieces = encode(GROUPS, chunk)
    pieces = list(pieces)
    assert all(len(p) <= chunk for p in pieces) and sum(map(len, pieces)) == total
    same(decode(pieces), GROUPS)
    loaded = load(b"".join(pieces))  # a valid safetensors file
    assert loaded["model/w"].tolist() == GROUPS["model"]["w"].tolist()
    assert loaded["control/c"].dtype == np.int64


def test_a_payload_the_library_wrote_is_read():
    flat = {"model/w": np.arange(6, dtype=np.float32), "model/b": np.ones((2, 2), np.float64)}
    blob = save(flat)
    out = decode([blob[:5], blob[5:100], blob[100:]])
    assert out["model"]["w"].tolist() == list(range(6)) and out["model"]["b"].shape == (2, 2)


def test_nothing_encodes_to_an_empty_payload():
    total, pieces = encode({}, 1024)
    assert (total, list(pieces)) == (0, [b""]) and decode([b""]) == {}


def test_a_non_contiguous_or_big_endian_array():
    t = np.arange(12, dtype=np.float32).reshape(3, 4).T
    same(decode(list(encode({"m": {"t": t}}, 16)[1])), {"m": {"t": np.ascontiguousarray(t)}})
    with pytest.raises(TransportError, match="little-endian"):
        encode({"m": {"x": np.ones(2, ">f4")}}, 16)
    with pytest.raises(TransportError, match="cannot be sent"):
        encode({"m": {"x": np.array(["a"])}}, 16)


def header_payload(header, body=b""):
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + body


@pytest.mark.parametrize("payload, why", [
    (b"\x01\x02", "shorter than"),
    ((10**9).to_bytes(8, "little") + b"{}", "past the end"),
    ((4).to_bytes(8, "little") + b"nope", "JSONDecodeError"),
    (header_payload([1, 2]), "not a JSON object"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "byte range"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "does not fill"),
    (header_payload({"a/x": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "KeyError"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8), "non-integer"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "a/y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlap"),
    (header_payload({"__metadata__": {"order": '["a/z"]'}, "a/x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                    b"\0"), "order"),
    (header_payload({"a/x": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, b"\0" * 8), "does not fill"),
])
def test_malformed_payloads_are_refused(payload, why):
    with pytest.raises(TransportError, match="not valid safetensors") as e:
        decode([payload])
    assert why in str(e.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_random_bytes_never_crash_the_decoder(blob, cut):
    pieces = [blob[i:i + cut] for i in range(0, len(blob), cut)] or [b""]
    try:
        out = decode(pieces)
    except TransportError:
        return
    assert isinstance(out, dict)
