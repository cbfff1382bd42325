"""Vectorized clients give what the sequential backend gives: the same global model within float
tolerance for plain local SGD (uneven clients, momentum, weight decay, several epochs, full batches), and
the very same bits for everything they hand to the sequential path."""

import numpy as np
import pytest
import torch

from cohort.channel.vectorized import VectorizedChannel
from cohort.config import load_config
from cohort.core.types import MODEL, Message
from cohort.experiment import build, run


def both(*sets, rounds=3):
    out = {}
    for backend in ("inprocess", "vectorized"):
        config = load_config(None, [f"rounds={rounds}", "output.progress=false", f"simulation.backend={backend}", *sets])
        out[backend] = run(config, write=False)
    return out["inprocess"], out["vectorized"]


@pytest.mark.parametrize("sets", [
    ["model.name=mlp", "data.partition=quantity", "data.alpha=0.5", "client.momentum=0.5", "client.weight_decay=0.001",
     "client.epochs=2", "client.batch_size=16"],
    ["model.name=logistic_regression", "client.batch_size=0"],  # full-batch steps
    ["model.name=mlp", "client.batch_size=64", "data.num_clients=40", "server.fraction=0.5"],  # clients smaller than a batch
    ["data.dataset=diabetes", "data.partition=iid", "model.name=linear_regression", "client.batch_size=8", "evaluate.target_metric=r2"],  # mse
])
def test_plain_local_sgd_matches_the_sequential_backend(sets):
    seq, vec = both(*sets)
    assert vec.stopped_by == seq.stopped_by == "rounds"
    for name, a in seq.state.model.items():
        np.testing.assert_allclose(vec.state.model[name], a, rtol=1e-5, atol=1e-6, err_msg=name)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(seq.state.model.values(), build(load_config(None, sets)).initial_state().model.values()))
    assert moved > 1e-3
    for r_seq, r_vec in zip(seq.state.history, vec.state.history):
        assert r_vec["train_loss"] == pytest.approx(r_seq["train_loss"], rel=1e-5)
        assert r_vec["clients_succeeded"] == r_seq["clients_succeeded"]
        assert r_vec["bytes_received"] == r_seq["bytes_received"]


@pytest.mark.parametrize("sets, why", [
    (["server.algorithm=fedprox"], "ProximalSteps"),
    (["client.optimizer=adam", "client.lr=0.01"], "adam"),
    (["server.algorithm=scaffold"], "ControlledSteps"),
])
def test_what_it_cannot_vectorize_runs_sequentially_with_the_same_bits(sets, why):
    seq, vec = both(*sets, rounds=2)
    for name, a in seq.state.model.items():
        assert vec.state.model[name].tobytes() == a.tobytes(), name
    exp = build(load_config(None, ["simulation.backend=vectorized", *sets]))
    channel = exp.channel()
    assert isinstance(channel, VectorizedChannel)
    assert why in channel.why_sequential(Message("fit", exp.initial_state().groups, {"round": 1}))
    assert "evaluate" in channel.why_sequential(Message("evaluate", exp.initial_state().groups, {}))


def test_diverging_clients_fail_as_values():
    config = load_config(None, ["rounds=2", "output.progress=false", "simulation.backend=vectorized", "client.lr=1000", "client.epochs=3",
                                "model.name=mlp"])
    result = run(config, write=False)
    assert result.stopped_by in ("failed", "rounds")
    record = result.state.history[-1]
    assert record["clients_failed"] >= 1 and any("diverged" in f or "non-finite" in f or "NaN" in f for f in record["failures"])
    assert all(np.isfinite(a).all() for a in result.state.model.values())


def test_asynchronous_dispatch_uses_each_clients_own_round():
    """FedBuff sends each client its own round in its instruction: the vectorized backend must shuffle with it."""
    seq, vec = both("model.name=mlp", "server.policy=fedbuff", "fedbuff.buffer_size=3", "fedbuff.concurrency=4",
                    "simulation.speed_spread=4", rounds=4)
    for name, a in seq.state.model.items():
        np.testing.assert_allclose(vec.state.model[name], a, rtol=1e-5, atol=1e-6, err_msg=name)


class WithExtras(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(30, 2)
        self.unused = torch.nn.Linear(3, 3)  # never called

    def forward(self, x):
        return self.body(x)


def test_unused_and_frozen_parameters_are_left_alone():
    from cohort.channel.inprocess import InProcessChannel
    from cohort.client.torch import TorchClientFactory
    from cohort.core.types import Instruction

    exp = build(load_config(None, []))
    start = {k: v.detach().numpy().copy() for k, v in WithExtras().state_dict().items()}
    message = Message("fit", {MODEL: start}, {"round": 1, "seed": 0})
    ins = [Instruction(c, {}) for c in range(3)]
    results = {}
    for name, cls in (("seq", InProcessChannel), ("vec", VectorizedChannel)):
        f = TorchClientFactory(WithExtras, exp.train, exp.partition, settings=exp.config.client, seed=0)
        results[name] = [r for _, r in cls(f).run(message, ins)]
    for a, b in zip(results["seq"], results["vec"]):
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], atol=1e-6)
        assert not b.arrays[MODEL]["unused.weight"].any()
    frozen = TorchClientFactory(WithExtras, exp.train, exp.partition, settings=exp.config.client, seed=0)
    frozen.model.body.bias.requires_grad_(False)
    assert "frozen" in VectorizedChannel(frozen).why_sequential(message)


def test_generated_clients_run_one_by_one_with_the_same_bits():
    sets = ["data.dataset=synthetic", "data.partition=generated", "data.num_clients=5000", "server.fraction=0.002"]
    seq, vec = both(*sets, rounds=2)
    for name, a in seq.state.model.items():
        assert vec.state.model[name].tobytes() == a.tobytes()


def _run_both(make, config, data=None, partition=None):
    from cohort.channel.inprocess import InProcessChannel
    from cohort.client.torch import TorchClientFactory
    from cohort.core.types import Instruction

    exp = build(load_config(None, ["data.partition=quantity", "data.alpha=0.5"]))  # clients of unequal size
    torch.manual_seed(1)
    start = {k: v.detach().numpy().copy() for k, v in make().state_dict().items()}
    message = Message("fit", {MODEL: start}, {"round": 1, "seed": 0, **config})
    ins = [Instruction(c, {}) for c in range(6)]
    out = {}
    for name, cls in (("seq", InProcessChannel), ("vec", VectorizedChannel)):
        f = TorchClientFactory(make, data or exp.train, partition or exp.partition, settings=exp.config.client, seed=0)
        out[name] = [r for _, r in cls(f).run(message, ins)]
    return out["seq"], out["vec"]


def _with_dead_features(dead):
    """The default training set with the given feature columns zero in every row."""
    import dataclasses

    exp = build(load_config(None, []))
    x = np.array(exp.train.x, copy=True)
    x[:, dead] = 0
    return dataclasses.replace(exp.train, x=x)


def test_features_no_row_uses_are_left_out_of_the_first_layer_and_do_not_move(monkeypatch):
    import cohort.channel.vectorized as vectorized

    decided, worth = [], vectorized._worth_cutting
    monkeypatch.setattr(vectorized, "_worth_cutting", lambda *a: decided.append(worth(*a)) or decided[-1])
    dead = [0, 3, 4, 11, 12, 13, 20, 29]  # 22 of 30 used: the cut takes 32 columns, which is all: no cut
    data = _with_dead_features(dead + list(range(21, 29)))  # 14 used: 16 columns
    make = lambda: torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    seq, vec = _run_both(make, {"batch_size": 2}, data=data)  # enough steps for the cut to pay
    assert decided == [True]
    for a, b in zip(seq, vec):
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        for k in a.arrays[MODEL]:
            assert b.arrays[MODEL][k].shape == a.arrays[MODEL][k].shape
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)
        assert not b.arrays[MODEL]["0.weight"][:, dead].any()  # exactly zero, as the sequential client's
        assert b.arrays[MODEL]["0.weight"][:, [1, 2, 5]].any()
    from cohort.client.torch import TorchClientFactory

    f = TorchClientFactory(make, data, build(load_config(None, [])).partition, seed=0)
    channel = VectorizedChannel(f)
    x, _, columns = channel._data(cut=True)
    assert columns is not None and len(columns) == 16 and x.shape == (len(data), 16)
    assert set(columns[:14].tolist()) == set(range(30)) - set(dead) - set(range(21, 29))


def test_the_cut_is_taken_only_where_the_steps_pay_for_it_and_the_weights_left_out_are_finite():
    from cohort.channel.vectorized import _worth_cutting

    columns = np.arange(16)  # 14 of 30 features left out
    weight = np.ones((4, 30), np.float32)
    assert _worth_cutting(columns, weight, steps=5) and not _worth_cutting(columns, weight, steps=4)
    assert not _worth_cutting(None, weight, steps=100)
    weight[2, 20] = np.nan
    assert not _worth_cutting(columns, weight, steps=100)
    weight[2, 20], weight[2, 3] = 1.0, np.inf  # a kept column: it trains as the sequential client's would
    assert _worth_cutting(columns, weight, steps=100)


def test_used_columns_pads_to_aligned_widths_and_declines_when_nothing_is_cut():
    from cohort.client.torch_dense import used_columns

    x = np.zeros((5, 40))
    x[1, [0, 5, 17]] = 1.0
    cols = used_columns(x)
    assert cols[:3].tolist() == [0, 5, 17] and len(cols) == 16 and len(set(cols.tolist())) == 16
    assert used_columns(np.ones((3, 40))) is None
    x = np.ones((2, 784), np.uint8)
    x[:, :67] = 0  # MNIST's count of blank pixels
    assert len(used_columns(x)) == 720
    x = np.ones((2, 20))
    x[:, :3] = 0  # 17 used: 32 would be more than there are
    assert used_columns(x) is None


def test_a_client_without_examples_fails_alone():
    exp = build(load_config(None, []))
    partition = [np.arange(0)] + [exp.partition[c] for c in range(1, len(exp.partition))]
    make = lambda: torch.nn.Sequential(torch.nn.Linear(30, 2))
    seq, vec = _run_both(make, {}, partition=partition)
    from cohort.core.types import ClientFailure

    assert isinstance(seq[0], ClientFailure) and isinstance(vec[0], ClientFailure)
    assert "0 examples" in vec[0].reason and "0 examples" in seq[0].reason
    for a, b in zip(seq[1:], vec[1:]):
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("make, dense", [
    (lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)), True),
    (lambda: torch.nn.Sequential(torch.nn.Linear(30, 16, bias=False), torch.nn.Sigmoid(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                 torch.nn.Identity(), torch.nn.Linear(8, 2), torch.nn.Tanh()), True),  # an activation on the output
    (lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 16), torch.nn.GELU(), torch.nn.Linear(16, 2)), False),
])
@pytest.mark.parametrize("config", [{}, {"momentum": 0.9, "weight_decay": 0.01, "epochs": 2}])
def test_dense_stacks_and_other_models_give_the_sequential_clients_results(make, dense, config):
    from cohort.client.torch_dense import DenseStack

    assert (DenseStack.of(make()) is not None) == dense  # written-out steps, or vmap
    seq, vec = _run_both(make, config)
    assert len(seq) == len(vec) == 6
    for a, b in zip(seq, vec):
        assert a.num_examples == b.num_examples
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-5)
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)
    assert max(float(np.abs(d).max()) for d in vec[0].arrays[MODEL].values()) > 1e-3  # the clients did train


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Sequential(torch.nn.Flatten(start_dim=2), torch.nn.Linear(30, 2)),
    lambda: torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(30, 2)),  # an activation before any layer
    lambda: torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.Linear(4, 2)),
    lambda: torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(30, 2))),
    lambda: torch.nn.Sequential(torch.nn.Linear(30, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2)),
    lambda: torch.nn.Sequential(),
    WithExtras,
    lambda: _shared_activation(),  # one Tanh at two positions: named_children lists it once, forward runs it twice
    lambda: _tied(),  # one Linear at two positions
    lambda: torch.nn.Sequential(torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(30, 2))),
    lambda: _hooked(),
])
def test_only_plain_dense_stacks_take_the_written_out_path(make):
    from cohort.client.torch_dense import DenseStack

    assert DenseStack.of(make()) is None


def _shared_activation():
    act = torch.nn.Tanh()
    return torch.nn.Sequential(torch.nn.Linear(30, 8), act, torch.nn.Linear(8, 8), act, torch.nn.Linear(8, 2))


def _tied():
    layer = torch.nn.Linear(8, 8)
    return torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), layer, torch.nn.ReLU(), layer, torch.nn.Linear(8, 2))


def _hooked():
    model = torch.nn.Sequential(torch.nn.Linear(30, 2))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    return model


@pytest.mark.parametrize("make", [_shared_activation, _hooked])
def test_models_the_written_out_path_refuses_still_match_the_sequential_clients(make):
    seq, vec = _run_both(make, {})
    for a, b in zip(seq, vec):
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)


def test_tied_parameters_run_client_by_client_with_every_name():
    seq, vec = _run_both(_tied, {})
    for a, b in zip(seq, vec):
        assert set(b.arrays[MODEL]) == set(a.arrays[MODEL]) == set(_tied().state_dict())
        for k in a.arrays[MODEL]:
            assert b.arrays[MODEL][k].tobytes() == a.arrays[MODEL][k].tobytes(), k


def test_mse_with_more_outputs_than_targets_is_not_taken_for_a_dense_stack():
    from cohort.client.torch_dense import DenseStack

    stack = DenseStack.of(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    assert stack.fits(torch.zeros(5, 4), torch.zeros(5), "cross_entropy")
    assert not stack.fits(torch.zeros(5, 4), torch.zeros(5), "mse")  # three outputs, one target each
    assert stack.fits(torch.zeros(5, 4), torch.zeros(5, 3), "mse")
    assert not stack.fits(torch.zeros(5, 2, 2), torch.zeros(5), "cross_entropy")  # rows not flattened


_small = lambda: torch.nn.Sequential(torch.nn.Linear(30, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_a_float32_dataset_with_a_scale_is_never_changed_in_place():
    import dataclasses

    data = dataclasses.replace(build(load_config(None, [])).train, x=np.array(build(load_config(None, [])).train.x,
                                                                              dtype=np.float32), x_scale=0.5)
    before = data.x.copy()
    for config in ({}, {"momentum": 0.5}, {}):  # the cut form, the plain one, the cut one again
        seq, vec = _run_both(_small, config, data=data)
        for a, b in zip(seq, vec):
            for k in a.arrays[MODEL]:
                np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)
    assert np.array_equal(data.x, before)


def test_a_first_layer_wider_than_the_data_fails_as_in_the_sequential_clients():
    data = _with_dead_features(list(range(10, 29)))
    seq, vec = _run_both(lambda: torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), {},
                         data=data)
    from cohort.core.types import ClientFailure

    assert all(isinstance(r, ClientFailure) for r in seq + vec)


def test_a_non_finite_weight_in_a_left_out_column_is_not_hidden():
    data = _with_dead_features([0, 3, 4, *range(10, 29)])
    torch.manual_seed(1)
    start = {k: v.detach().numpy().copy() for k, v in _small().state_dict().items()}
    start["0.weight"][2, 28] = np.inf  # column 28 is zero in every row: 0 × inf is NaN for the sequential client
    from cohort.channel.inprocess import InProcessChannel
    from cohort.client.torch import TorchClientFactory
    from cohort.core.types import ClientFailure, Instruction

    message = Message("fit", {MODEL: start}, {"round": 1, "seed": 0})
    exp = build(load_config(None, []))
    f = TorchClientFactory(_small, data, exp.partition, settings=exp.config.client, seed=0)
    seq = [r for _, r in InProcessChannel(f).run(message, [Instruction(0, {})])][0]
    vec = [r for _, r in VectorizedChannel(f).run(message, [Instruction(0, {})])][0]
    assert not np.isfinite(seq.arrays[MODEL]["2.weight"]).all()
    assert isinstance(vec, ClientFailure) and "diverged" in vec.reason


def test_incoming_arrays_with_any_strides_and_no_write_access_train_alike():
    torch.manual_seed(1)
    start = {}
    for k, v in _small().state_dict().items():
        a = np.ascontiguousarray(v.detach().numpy()[..., ::-1])[..., ::-1]  # negative strides
        a.flags.writeable = False
        start[k] = a
    from cohort.channel.inprocess import InProcessChannel
    from cohort.client.torch import TorchClientFactory
    from cohort.core.types import Instruction

    exp = build(load_config(None, []))
    message = Message("fit", {MODEL: start}, {"round": 1, "seed": 0})
    out = {}
    for name, cls in (("seq", InProcessChannel), ("vec", VectorizedChannel)):
        f = TorchClientFactory(_small, exp.train, exp.partition, settings=exp.config.client, seed=0)
        out[name] = [r for _, r in cls(f).run(message, [Instruction(c, {}) for c in range(4)])]
    for a, b in zip(out["seq"], out["vec"]):
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)
    assert not np.shares_memory(out["vec"][0].arrays[MODEL]["0.weight"], out["vec"][1].arrays[MODEL]["0.weight"])


def test_a_non_finite_row_of_one_client_leaves_the_others_alone():
    import dataclasses

    exp = build(load_config(None, ["data.partition=quantity", "data.alpha=0.5"]))
    x = np.array(exp.train.x, copy=True)
    owner = next(c for c in range(len(exp.partition)) if 0 in set(exp.partition[c].tolist()))
    x[0, 5] = np.nan
    seq, vec = _run_both(_small, {}, data=dataclasses.replace(exp.train, x=x))
    for c, (a, b) in enumerate(zip(seq, vec)):
        if c == owner:
            continue
        assert type(a) is type(b)
        for k in a.arrays[MODEL]:
            np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)


def test_slices_of_different_sizes_reuse_the_kept_parameters_without_mixing_them():
    from cohort.channel.inprocess import InProcessChannel
    from cohort.client.torch import TorchClientFactory
    from cohort.core.types import Instruction

    exp = build(load_config(None, ["data.partition=quantity", "data.alpha=0.5"]))
    torch.manual_seed(1)
    start = {k: v.detach().numpy().copy() for k, v in _small().state_dict().items()}
    make = lambda cls: cls(TorchClientFactory(_small, exp.train, exp.partition, settings=exp.config.client, seed=0))
    seq, vec = make(InProcessChannel), make(VectorizedChannel)
    for round_, clients in ((1, range(6)), (2, range(3, 6)), (3, range(8))):  # larger, smaller, larger again
        message = Message("fit", {MODEL: start}, {"round": round_, "seed": 0})
        ins = [Instruction(c, {}) for c in clients]
        for a, b in zip([r for _, r in seq.run(message, ins)], [r for _, r in vec.run(message, ins)]):
            for k in a.arrays[MODEL]:
                np.testing.assert_allclose(b.arrays[MODEL][k], a.arrays[MODEL][k], rtol=1e-4, atol=2e-6, err_msg=k)
    assert len(vec._buffers["0.weight"]) == 8
