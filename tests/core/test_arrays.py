"""Named arrays: lossless round trips to torch, flat vectors and safetensors; update checks."""

import numpy as np
import pytest
import torch
from torch import nn

from cohort.core.arrays import (
    add, check_like, flatten, from_torch, load_safetensors, nbytes, num_parameters, save_safetensors,
    spec_of, subtract, to_torch, unflatten,
)
from cohort.core.errors import UpdateRejected


def model_with_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.train()(torch.randn(5, 1, 8, 8))  # moves the running stats and num_batches_tracked
    return model


def test_state_dict_round_trip_is_lossless():
    model = model_with_buffers()
    sd = model.state_dict()
    arrays = from_torch(sd)
    assert list(arrays) == list(sd)  # the model's order
    assert arrays["1.num_batches_tracked"].dtype == np.int64 and arrays["1.num_batches_tracked"] == 1
    back = to_torch(arrays)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype
        assert torch.equal(back[name], t)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    fresh.load_state_dict(back)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_from_torch_copies():
    model = model_with_buffers()
    arrays = from_torch(model.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not np.array_equal(arrays["0.weight"], model[0].weight.detach().numpy())


def test_flatten_unflatten_round_trip():
    arrays = from_torch(model_with_buffers().state_dict())
    vec = flatten(arrays)
    assert vec.shape == (num_parameters(arrays),)
    back = unflatten(vec, arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)
    with pytest.raises(ValueError, match="expected"):
        unflatten(vec[:-1], arrays)


def test_safetensors_round_trip_keeps_order_dtypes_and_values(tmp_path):
    arrays = {"z.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float64),
              "m.count": np.array(7, np.int64)}
    path = save_safetensors(arrays, tmp_path / "m.safetensors", {"round": "3"})
    back = load_safetensors(path)
    assert list(back) == list(arrays)
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k])
    assert not (tmp_path / "m.safetensors.tmp").exists()


def test_delta_sign_and_byte_count():
    old = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3, np.int64)}
    new = {"w": np.array([1.5, 1.0], np.float32), "n": np.array(5, np.int64)}
    delta = subtract(new, old)
    np.testing.assert_array_equal(add(old, delta)["w"], new["w"])
    assert add(old, {"w": delta["w"], "n": np.array(1.6)})["n"] == 5  # integer entries are rounded
    assert nbytes(old) == 2 * 4 + 8


def test_check_like_accepts_a_matching_update_and_names_the_bad_entry():
    spec = spec_of({"layer.w": np.zeros((2, 2), np.float32)})
    check_like({"layer.w": np.ones((2, 2), np.float32)}, spec)
    with pytest.raises(UpdateRejected, match=r"layer\.w.*shape \(2,\).*expected \(2, 2\)"):
        check_like({"layer.w": np.ones(2, np.float32)}, spec)
    with pytest.raises(UpdateRejected, match="1 non-finite"):
        check_like({"layer.w": np.array([[0, 0], [0, np.nan]], np.float32)}, spec)
