"""model.safetensors: the same arrays and metadata give the same bytes in any process, with umask permissions."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cohort.core.arrays import load_safetensors, save_safetensors
from cohort.core.errors import DataError

# Many metadata keys: written in a random order, two saves would match by chance once in 17! tries.
SCRIPT = """
import sys
import numpy as np
from cohort.core.arrays import save_safetensors

meta = {f"key{i:02d}": f"value {i}" for i in range(16)}
if sys.argv[2] == "reversed":
    meta = dict(reversed(list(meta.items())))
arrays = {"z.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "a.bias": np.array([0.5, -1.0]),
          "m.count": np.array(7, np.int64), "e.empty": np.zeros((0, 2), np.float16)}
save_safetensors(arrays, sys.argv[1], meta)
"""


def save_in_a_new_process(path, seed: str, order: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path), order], check=True, env=env, timeout=120)
    return path.read_bytes()


def test_two_processes_write_the_same_bytes(tmp_path):
    first = save_in_a_new_process(tmp_path / "a.safetensors", "0", "forward")
    second = save_in_a_new_process(tmp_path / "b.safetensors", "12345", "reversed")
    assert first == second
    back = load_safetensors(tmp_path / "a.safetensors")
    assert list(back) == ["z.weight", "a.bias", "m.count", "e.empty"]
    np.testing.assert_array_equal(back["z.weight"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert back["m.count"].dtype == np.int64 and back["e.empty"].shape == (0, 2)


def arrays() -> dict[str, np.ndarray]:
    return {"w": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int32)}


def test_saves_in_one_process_write_the_same_bytes_with_sorted_metadata(tmp_path):
    meta = {f"k{i}": str(i) for i in range(12)}
    blobs = [save_safetensors(arrays(), tmp_path / f"{i}.safetensors", meta).read_bytes() for i in range(4)]
    assert len(set(blobs)) == 1
    blob = blobs[0]
    size = int.from_bytes(blob[:8], "little")
    assert (8 + size) % 8 == 0  # tensor data stays 8-byte aligned, as safetensors writes it
    header = json.loads(blob[8 : 8 + size])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert header["__metadata__"]["order"] == '["w", "b"]'

    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), framework="numpy") as f:  # still a valid file for safetensors
        assert f.metadata() == {**meta, "order": '["w", "b"]'}
        np.testing.assert_array_equal(f.get_tensor("w"), arrays()["w"])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_the_file_gets_the_permissions_of_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_safetensors(arrays(), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_stale_temp_file_does_not_pass_on_its_mode(tmp_path):
    stale = tmp_path / "model.safetensors.tmp"
    stale.write_bytes(b"half a model")
    stale.chmod(0o600)
    old = os.umask(0o022)
    try:
        path = save_safetensors(arrays(), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and not stale.exists()
    assert list(load_safetensors(path)) == ["w", "b"]


def test_a_failed_save_keeps_the_previous_model_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = save_safetensors(arrays(), tmp_path / "model.safetensors", {"round": "1"})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_safetensors({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.int32)}, path, {"round": "2"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_loading_a_file_that_is_not_safetensors_is_a_data_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(DataError, match=rf"{path} is not a readable safetensors file"):
        load_safetensors(path)


@pytest.mark.parametrize("order", ['["w"]', '["w", "b", "x"]', '["w", "w"]', "not json", '{"w": 1}', "[1, 2]"])
def test_loading_with_an_order_that_does_not_match_the_tensors_is_a_data_error(tmp_path, order):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file(arrays(), str(path), metadata={"order": order})
    with pytest.raises(DataError, match=r"the metadata 'order' .* does not name exactly the 2 tensors"):
        load_safetensors(path)


def test_loading_a_file_written_by_another_tool_keeps_its_own_order(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file(arrays(), str(path))
    assert sorted(load_safetensors(path)) == ["b", "w"]
