"""TorchClient: local training as bare PyTorch would do it, seeded, hooks, and FedSGD's full gradient."""

import numpy as np
import pytest
import torch
from torch import nn

from cohort.client.torch import TorchClient, TorchClientFactory, TrainSettings, initial_arrays, to_tensors
from cohort.core.arrays import add, from_torch
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng
from cohort.data import ArrayDataset, iid, split_holdout


def make_data(n=37, d=5, classes=3, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return x, y


def model_fn():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def test_fit_matches_a_bare_pytorch_loop():
    """E epochs of seeded shuffles, batches of B with a last partial one, SGD with momentum."""
    x, y = to_tensors(*make_data())
    arrays = initial_arrays(model_fn, seed=1)
    settings = TrainSettings(epochs=2, batch_size=10, lr=0.05, momentum=0.5)
    client = TorchClient(model_fn(), x, y, settings=settings, client_id=4, seed=9)
    result = client.fit(arrays, {"round": 3, "seed": 9})

    ref = model_fn()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.5)
    order = rng(9, 3, Stage.SHUFFLE, 4)
    steps = 0
    for _ in range(2):
        perm = torch.from_numpy(order.permutation(len(x)))
        for start in range(0, len(x), 10):
            idx = perm[start : start + 10]
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
    assert steps == 8  # ceil(37 / 10) * 2
    trained = from_torch(ref.state_dict())
    for k, v in add(arrays, result.delta).items():
        np.testing.assert_allclose(v, trained[k], rtol=1e-5, atol=1e-6)
    assert result.num_examples == 37 and result.metrics["train_loss"] > 0


def test_fit_is_seeded_by_seed_round_and_client():
    x, y = to_tensors(*make_data())
    arrays = initial_arrays(model_fn, seed=0)

    def delta(seed, round_, cid):
        c = TorchClient(model_fn(), x, y, settings=TrainSettings(batch_size=4, lr=0.1), client_id=cid)
        return c.fit(arrays, {"round": round_, "seed": seed}).delta["0.weight"]

    assert np.array_equal(delta(0, 1, 2), delta(0, 1, 2))
    assert not np.array_equal(delta(0, 1, 2), delta(0, 2, 2))
    assert not np.array_equal(delta(0, 1, 2), delta(0, 1, 3))
    assert not np.array_equal(delta(0, 1, 2), delta(1, 1, 2))


def test_dropout_is_seeded_and_leaves_the_global_torch_rng_alone():
    x, y = to_tensors(*make_data())
    fn = lambda: nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 3))  # noqa: E731
    arrays = initial_arrays(fn, seed=0)
    c1, c2 = TorchClient(fn(), x, y), TorchClient(fn(), x, y)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    d1 = c1.fit(arrays, {"round": 1, "seed": 0}).delta
    assert torch.equal(torch.random.get_rng_state(), before)
    d2 = c2.fit(arrays, {"round": 1, "seed": 0}).delta
    for k in d1:
        assert np.array_equal(d1[k], d2[k])


def test_round_config_overrides_settings():
    x, y = to_tensors(*make_data())
    arrays = initial_arrays(model_fn, seed=0)
    client = TorchClient(model_fn(), x, y, settings=TrainSettings(lr=0.1, batch_size=5))
    small = client.fit(arrays, {"round": 1, "lr": 1e-4}).delta["2.bias"]
    big = client.fit(arrays, {"round": 1}).delta["2.bias"]
    assert np.abs(small).sum() * 100 < np.abs(big).sum()


def test_gradient_returns_the_full_batch_gradient():
    """Linear regression, MSE: grad_w = 2/n Σ (w·x + b − y) x, computed by hand."""
    g = np.random.default_rng(3)
    x = g.normal(size=(23, 4)).astype(np.float32)
    y = g.normal(size=23).astype(np.float32)
    fn = lambda: nn.Linear(4, 1)  # noqa: E731
    arrays = {"weight": np.array([[0.5, -1.0, 0.25, 2.0]], np.float32), "bias": np.array([0.1], np.float32)}
    client = TorchClient(fn(), *to_tensors(x, y), loss="mse", settings=TrainSettings(batch_size=5))
    result = client.gradient(arrays, {"round": 1})
    residual = x.astype(np.float64) @ arrays["weight"][0] + 0.1 - y
    np.testing.assert_allclose(result.delta["weight"][0], 2 / 23 * residual @ x, rtol=1e-5)
    np.testing.assert_allclose(result.delta["bias"], [2 / 23 * residual.sum()], rtol=1e-5)
    assert result.num_examples == 23


def test_evaluate_on_held_out_data_and_its_absence():
    x, y = to_tensors(*make_data())
    arrays = initial_arrays(model_fn, seed=0)
    client = TorchClient(model_fn(), x[:30], y[:30], test=(x[30:], y[30:]))
    res = client.evaluate(arrays, {"round": 1})
    assert res.num_examples == 7 and 0 <= res.metrics["accuracy"] <= 1 and res.loss > 0
    with pytest.raises(DataError, match="held-out"):
        TorchClient(model_fn(), x, y).evaluate(arrays, {})


def test_arrays_that_do_not_fit_the_model_are_a_clear_error():
    x, y = to_tensors(*make_data())
    with pytest.raises(ConfigError, match="do not fit"):
        TorchClient(model_fn(), x, y).fit({"weight": np.zeros((1, 5), np.float32)}, {})


@pytest.mark.parametrize("kwargs, key", [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"),
                                         ({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0}, "lr"),
                                         ({"momentum": 1.0}, "momentum")])
def test_train_settings_are_checked(kwargs, key):
    with pytest.raises(ConfigError, match=f"client.{key}"):
        TrainSettings(**kwargs)


def test_factory_materialises_only_the_sampled_clients_data_and_reuses_one_model():
    x, y = make_data(n=100)
    ds = ArrayDataset(x, y, "classification", 3)
    train, held = split_holdout(iid(100, 10, seed=0), 0.2, seed=0)
    factory = TorchClientFactory(model_fn, ds, train, held, settings=TrainSettings())
    a, b = factory(3), factory(7)
    assert a.model is b.model  # one model per process
    np.testing.assert_array_equal(a.x.numpy(), x[train[3]])
    np.testing.assert_array_equal(a.test[1].numpy(), y[held[3]])
    import pickle

    clone = pickle.loads(pickle.dumps(factory))
    assert clone._model is None and len(clone) == 10  # the cached model does not travel to workers


def test_adam_is_available():
    x, y = to_tensors(*make_data())
    arrays = initial_arrays(model_fn, seed=0)
    res = TorchClient(model_fn(), x, y, settings=TrainSettings(optimizer="adam", lr=1e-3)).fit(arrays, {"round": 1})
    # Adam's first steps move every weight by about lr, whatever its gradient's size
    assert 1e-4 < np.abs(res.delta["0.weight"]).mean() < 1e-2


def test_the_evaluator_of_a_convolutional_model_agrees_with_a_plain_evaluation():
    """Channels-last images in batches of 64 (the fast arrangement for convolutions here) give the loss
    and accuracy of a plain pass in one batch, and leave dense models in large batches."""
    from cohort.client.torch import TorchEvaluator, evaluation_batch
    from cohort.models import model_factory

    g = np.random.default_rng(0)
    test = ArrayDataset(g.integers(0, 256, size=(300, 1, 28, 28), dtype=np.uint8), g.integers(0, 10, 300).astype(np.int64),
                        "classification", num_classes=10, x_scale=1 / 255)
    make = model_factory("mnist_cnn", (1, 28, 28), 10)
    arrays = initial_arrays(make, seed=3)
    got = TorchEvaluator(make, test)(arrays)
    assert TorchEvaluator(make, test).model.get_parameter("0.weight").is_contiguous(memory_format=torch.channels_last)
    model = make()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    model.eval()
    x, y = to_tensors(test.x, test.y, test.x_scale)
    with torch.no_grad():
        out = model(x)
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    assert got["accuracy"] == int((out.argmax(1) == y).sum()) / len(y)
    assert evaluation_batch(make()) == 64 and evaluation_batch(model_fn()) == 1024


class ViewCNN(nn.Module):
    """The tutorial style: x.view(len(x), -1) after a convolution, which needs the plain layout."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))


class Volume(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv3d(1, 2, 3), nn.Linear(2 * 6 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.conv(x.unsqueeze(1)).flatten(1))


@pytest.mark.parametrize("make, shape", [(ViewCNN, (40, 1, 8, 8)), (Volume, (40, 8, 8, 8))])
def test_the_evaluator_keeps_the_plain_layout_where_channels_last_does_not_fit(make, shape):
    from cohort.client.torch import TorchEvaluator

    g = np.random.default_rng(1)
    test = ArrayDataset(g.normal(size=shape).astype(np.float32), g.integers(0, 3, 40).astype(np.int64), "classification",
                        num_classes=3)
    arrays = initial_arrays(make, seed=0)
    got = TorchEvaluator(make, test)(arrays)
    model = make()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(test.x))
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, torch.from_numpy(test.y))), rel=1e-5)


class Doubling(nn.Module):
    """Loads every tensor doubled: a module with its own loading, which load_arrays must honour."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 3)
        self.body.register_load_state_dict_pre_hook(
            lambda module, state, prefix, *rest: state.update({k: v * 2 for k, v in state.items() if k.startswith(prefix)}))

    def forward(self, x):
        return self.body(x)


def test_loading_goes_through_torch_when_a_module_changes_how_it_loads():
    from cohort.client.torch import load_arrays

    model = Doubling()
    arrays = {k: np.ones(v.shape, np.float32) for k, v in model.state_dict().items()}
    load_arrays(model, arrays)
    assert torch.equal(model.body.weight.detach(), torch.full((3, 5), 2.0))
    plain = nn.Linear(5, 3)
    load_arrays(plain, {k: np.full(v.shape, 0.5, np.float64) for k, v in plain.state_dict().items()})  # cast, as torch does
    assert torch.equal(plain.weight.detach(), torch.full((3, 5), 0.5)) and plain.weight.dtype == torch.float32


def _small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


@pytest.mark.parametrize("task", ["fit", "gradient"])
def test_convolutional_nets_train_in_channels_last_and_hand_back_plain_arrays(task, monkeypatch):
    """Channels-last is how conv nets train here (faster); the update is what the plain layout gives,
    within float tolerance, as C-ordered arrays, and the model is left in the plain layout."""
    import cohort.client.torch_steps as steps

    g = np.random.default_rng(2)
    x, y = to_tensors(g.normal(size=(30, 1, 8, 8)).astype(np.float32), g.integers(0, 3, 30).astype(np.int64))
    arrays = initial_arrays(_small_cnn, seed=0)
    settings = TrainSettings(batch_size=8, epochs=2, lr=0.05, momentum=0.9)
    model = _small_cnn()
    assert steps.takes_channels_last(model, x)
    got = getattr(TorchClient(model, x, y, settings=settings), task)(arrays, {"round": 1}).delta
    assert all(p.is_contiguous() for p in model.parameters())
    monkeypatch.setattr(steps, "takes_channels_last", lambda model, x: False)
    plain = getattr(TorchClient(_small_cnn(), x, y, settings=settings), task)(arrays, {"round": 1}).delta
    for k in plain:
        assert got[k].flags.c_contiguous and got[k].dtype == plain[k].dtype, k
        np.testing.assert_allclose(got[k], plain[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert np.abs(got["0.weight"]).max() > 1e-3


def test_the_channels_last_trial_moves_no_statistic_and_refuses_a_view_after_a_convolution():
    import cohort.client.torch_steps as steps

    model = _small_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert steps.takes_channels_last(model, torch.randn(5, 1, 8, 8) * 3)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN stats too
    assert not steps.takes_channels_last(ViewCNN(), torch.randn(5, 1, 8, 8))
    assert not steps.takes_channels_last(model_fn(), torch.randn(5, 5))  # no convolution
    view = ViewCNN()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    res = TorchClient(view, x, y).fit(initial_arrays(ViewCNN, seed=0), {"round": 1})  # trains, in the plain layout
    assert np.abs(res.delta["conv.weight"]).max() > 0


@pytest.mark.parametrize("flatten", [True, False])
def test_the_evaluator_leaves_out_features_no_test_row_uses_with_the_same_result(flatten):
    from cohort.client.torch import TorchEvaluator

    g = np.random.default_rng(4)
    x = g.normal(size=(200, 40)).astype(np.float32)
    x[:, 3:30] = 0  # 13 used: 16 columns
    shape = (200, 1, 5, 8) if flatten else (200, 40)
    test = ArrayDataset(x.reshape(shape), g.integers(0, 3, 200).astype(np.int64), "classification", num_classes=3)
    make = lambda: nn.Sequential(*([nn.Flatten()] if flatten else []), nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 3))
    arrays = initial_arrays(make, seed=0)
    evaluator = TorchEvaluator(make, test)
    got = evaluator(arrays)
    assert evaluator.cut is not None and len(evaluator.cut[1]) == 16 and evaluator.x.shape == (200, 16)
    model = make()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(test.x))
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, torch.from_numpy(test.y))), rel=1e-6)
    assert got["accuracy"] == int((out.argmax(1) == torch.from_numpy(test.y)).sum()) / 200
    assert arrays[next(iter(arrays))].shape == (8, 40)  # the caller's arrays are left whole
    three_d = ArrayDataset(x.reshape(200, 5, 8), test.y, "classification", num_classes=3)  # a Linear over the last axis
    assert TorchEvaluator(lambda: nn.Sequential(nn.Linear(8, 3)), three_d).cut is None


def test_the_cut_evaluator_keeps_a_non_finite_weight_in_a_left_out_column_visible():
    from cohort.client.torch import TorchEvaluator

    g = np.random.default_rng(5)
    x = g.normal(size=(100, 40)).astype(np.float32)
    x[:, 3:30] = 0
    test = ArrayDataset(x, g.integers(0, 3, 100).astype(np.int64), "classification", num_classes=3)
    make = lambda: nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 3))
    arrays = initial_arrays(make, seed=0)
    arrays["0.weight"] = arrays["0.weight"].copy()
    arrays["0.weight"][1, 29] = np.inf  # column 29 is left out: 0 × inf is NaN in the whole model
    model = make()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x))
    assert torch.isnan(nn.functional.cross_entropy(out, torch.from_numpy(test.y)))
    evaluator = TorchEvaluator(make, test)
    assert evaluator.cut is not None and np.isnan(evaluator(arrays)["loss"])
    assert np.isinf(arrays["0.weight"][1, 29])  # the caller's array is untouched


class TrainViewCNN(nn.Module):
    """Needs the plain layout only when training: the trial must run in train mode to see it."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(len(x), -1) if self.training else h.flatten(1))


def test_channels_last_is_refused_where_it_would_change_the_draws_or_fail_in_training():
    import cohort.client.torch_steps as steps

    x = torch.randn(6, 1, 8, 8)
    dropout = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    assert not steps.takes_channels_last(dropout, x)  # its mask is filled in memory order
    assert steps.takes_channels_last(dropout, x, training=False)  # evaluation draws nothing
    assert not steps.takes_channels_last(TrainViewCNN(), x) and steps.takes_channels_last(TrainViewCNN(), x, training=False)
    small = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3))  # a 3x3 image: one pixel out, any layout
    x3, x5 = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 5, 5)
    state = torch.get_rng_state()
    assert steps.takes_channels_last(small, x3)
    assert not steps.takes_channels_last(small, x5)  # another size is another trial (this one fails in any layout)
    assert torch.equal(state, torch.get_rng_state())  # the trials drew from a stream of their own
    arrays = initial_arrays(lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(),
                                                  nn.Linear(4 * 8 * 8, 3)), seed=0)
    y = torch.randint(0, 3, (6,))
    got = TorchClient(dropout, x, y).fit(arrays, {"round": 1}).delta
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    again = TorchClient(plain, x, y).fit(arrays, {"round": 1}).delta
    for k in got:
        assert got[k].tobytes() == again[k].tobytes(), k  # the same draws, the same bits
    res = TorchClient(TrainViewCNN(), x, y).fit(initial_arrays(TrainViewCNN, seed=0), {"round": 1})
    assert np.abs(res.delta["conv.weight"]).max() > 0


def test_the_evaluator_cut_leaves_alone_what_it_cannot_read():
    from cohort.client.torch import TorchEvaluator

    g = np.random.default_rng(6)
    y = g.integers(0, 3, 20).astype(np.int64)
    blank = ArrayDataset(np.zeros((20, 36), np.float32), y, "classification", num_classes=3)  # no feature used
    make = lambda: nn.Sequential(nn.Linear(36, 3))
    got = TorchEvaluator(make, blank)(initial_arrays(make, seed=0))
    assert TorchEvaluator(make, blank).cut is None and np.isfinite(got["loss"])
    x = g.normal(size=(20, 36)).astype(np.float32)
    x[:, 5:] = 0
    wide = lambda: nn.Sequential(nn.Linear(40, 3))  # wider than the rows: the model's own error, not a quiet answer
    evaluator = TorchEvaluator(wide, ArrayDataset(x, y, "classification", num_classes=3))
    assert evaluator.cut is None
    with pytest.raises(RuntimeError):
        evaluator(initial_arrays(wide, seed=0))
    empty = ArrayDataset(np.zeros((0, 36), np.float32), np.zeros(0, np.int64), "classification", num_classes=3)
    assert TorchEvaluator(make, empty).cut is None
