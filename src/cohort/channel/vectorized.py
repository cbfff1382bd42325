"""Vectorized clients: a cohort of small-model clients trained at once with ``torch.func``.

Every client of a fit task gets its own copy of the parameters, stacked along a leading client axis;
one step runs every client's batch through ``vmap(functional_call(model, ...))``, so ten or a thousand
clients cost a handful of large tensor operations instead of thousands of small ones. Each client goes
through the same batches as in the sequential backend (its seeded order, its own batch size, a last
partial batch), padded to the largest batch and masked; a client whose steps are done stops moving.
The steps are plain SGD with momentum and weight decay, written out on the stacked tensors. Dense stacks
take the written-out path of ``client/torch_dense.py``; under plain SGD their first layer leaves out the input
features no training row uses (``used_columns``), whose weights would not move.

It computes what the sequential backend computes, within float tolerance (a batched matrix product
sums in another order). What it cannot run the same way, it hands to the sequential path of
:class:`InProcessChannel`: evaluation, algorithms other than plain local steps (FedProx, SCAFFOLD, ...),
Adam, DP-SGD, local DP, models with buffers (batch norm) and clients other than the torch factory's.
Dropout draws differ from the sequential backend's (``vmap`` randomness is per client, not per process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from cohort.algorithms.fedavg import LocalSteps
from cohort.client.torch_dense import DenseStack, DenseSteps, left_out, used_columns
from cohort.channel.inprocess import InProcessChannel, torch_threads
from cohort.channel.runtime import Outcome
from cohort.client.torch import LazyTorchClients, TorchClientFactory, seed_torch, to_tensors
from cohort.core.errors import ConfigError
from cohort.core.records import COMPRESSION
from cohort.core.seeding import Stage, rng
from cohort.core.types import MODEL, ClientFailure, FailureStage, Instruction, Message, Reply

MAX_CLIENTS = 1024  # clients stacked at once; a larger cohort goes in slices
TRAINING_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer")  # must agree across a slice


class VectorizedChannel(InProcessChannel):
    """Fit tasks of plain local SGD trained for many clients at once; everything else as InProcessChannel."""

    def __init__(self, client_fn, client_half=None, *, threads: int = 1, states=None, max_clients: int = MAX_CLIENTS) -> None:
        super().__init__(client_fn, client_half, threads=threads, states=states)
        if not (isinstance(max_clients, int) and 1 <= max_clients <= 65536):
            raise ConfigError(f"max_clients is {max_clients!r}; expected an integer from 1 to 65536")
        self.max_clients = max_clients
        self._tensors: tuple | None = None  # (cut, features, targets): see _data
        self._columns: np.ndarray | None | bool = False  # the training set's used features; False: not yet known
        self._buffers: dict[str, torch.Tensor] = {}  # the dense path's stacked parameters, kept from slice to slice

    def why_sequential(self, message: Message) -> str | None:
        """Why this task runs client by client, or None when it can be vectorized."""
        f = self.client_fn
        if message.task != "fit":
            return f"{message.task} tasks"
        if type(self.client_half) is not LocalSteps:
            return f"{type(self.client_half).__name__} (only plain local steps are vectorized)"
        if not isinstance(f, TorchClientFactory) or isinstance(f, LazyTorchClients):
            return "clients other than the torch framework's stored ones (generated clients run one by one)"
        s = f.settings.override(message.config)
        if s.optimizer != "sgd" or s.dp_sgd or s.ldp:
            return "adam, DP-SGD or local DP"
        if any(True for _ in f.model.buffers()):
            return "models with buffers (batch norm)"
        if not all(p.requires_grad for p in f.model.parameters()):
            return "models with frozen parameters"
        if len(f.model.state_dict()) != len(dict(f.model.named_parameters())):  # the update names every entry
            return "models with tied (shared) parameters"
        if isinstance(message.config.get(COMPRESSION), dict):  # (a secure round's fit is another task: secagg:fit)
            return "compression"
        return None

    def run(self, message: Message, instructions: Sequence[Instruction],
            timeout_s: float | None = None) -> Iterator[tuple[int, Outcome]]:
        if self.why_sequential(message) is not None:
            yield from super().run(message, instructions, timeout_s)
            return
        self._sent(message, len(instructions))
        for start in range(0, len(instructions), self.max_clients):
            chunk = list(instructions[start:start + self.max_clients])
            configs = [{**message.config, **ins.config} for ins in chunk]
            train_keys = [{k: c.get(k) for k in TRAINING_KEYS} for c in configs]
            if any(t != train_keys[0] for t in train_keys):  # clients asked to train differently: one by one
                for k, ins in enumerate(chunk):
                    with torch_threads(self.threads):
                        outcome, before, after = self._run_here(message, ins)
                    yield start + k, self._received(ins.client_id, outcome, before, after)
                continue
            with torch_threads(self.threads):
                started = time.perf_counter()
                try:
                    outcomes = self._train(message, chunk, configs)
                except Exception as e:  # a framework error fails this slice's clients as values, as in user code
                    outcomes = [ClientFailure(ins.client_id, FailureStage.FIT, f"{type(e).__name__}: {e}") for ins in chunk]
                each = (time.perf_counter() - started) / len(chunk)  # the clients' share of the slice's time
            for k, (ins, outcome) in enumerate(zip(chunk, outcomes)):
                state = self.states.get(ins.client_id)
                if isinstance(outcome, Reply):
                    outcome = replace(outcome, seconds=each)
                yield start + k, self._received(ins.client_id, outcome, state, state)

    def _stacked(self, name: str, start: torch.Tensor, k: int) -> torch.Tensor:
        """``k`` copies of ``start`` in a buffer kept for the next slice: a fresh one of 1,000 copies of the
        2NN's first layer took 170 ms to allocate here (its pages faulted in and zeroed), filling a kept
        one 25 ms. It holds the largest slice's parameters between rounds."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != start.dtype or buf.shape[1:] != start.shape or len(buf) < k:
            buf = self._buffers[name] = torch.empty((k, *start.shape), dtype=start.dtype)
        return buf[:k].copy_(start.unsqueeze(0).expand(k, *start.shape))

    def _used_features(self) -> np.ndarray | None:
        """``used_columns`` of the training set, worked out once (zero before scaling is zero after)."""
        if self._columns is False:
            ds = self.client_fn.dataset
            self._columns = used_columns(ds.x.reshape(len(ds.x), -1))
        return self._columns

    def _data(self, cut: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        """The whole training set as the torch client converts it, once. With ``cut`` (the dense path under
        plain SGD), its rows flattened and cut to the features some row uses, and the index of those
        features (None when that is all of them, and then the plain form); one form is kept at a time."""
        ds = self.client_fn.dataset
        columns = self._used_features() if cut else None
        if self._tensors is None or self._tensors[0] != (columns is not None):
            self._tensors = None  # the old form goes before the new one is made
            x = ds.x if columns is None else np.take(ds.x.reshape(len(ds.x), -1), columns, axis=1)
            self._tensors = (columns is not None, *to_tensors(x, ds.y, ds.x_scale))
        return self._tensors[1], self._tensors[2], columns

    def _train(self, message: Message, chunk: list[Instruction], configs: list[dict]) -> list[Outcome]:
        f: TorchClientFactory = self.client_fn
        settings = f.settings.override(configs[0])  # the same for every client of the slice (checked by run)
        empty = {c for c, ins in enumerate(chunk) if len(f.train[ins.client_id]) == 0}
        if empty:  # as the sequential client refuses one: a failure of its own, the others train
            done = self._train(message, [i for c, i in enumerate(chunk) if c not in empty],
                               [g for c, g in enumerate(configs) if c not in empty]) if len(empty) < len(chunk) else []
            it = iter(done)
            return [ClientFailure(ins.client_id, FailureStage.FIT, f"client {ins.client_id} has 0 examples; expected at least 1")
                    if c in empty else next(it) for c, ins in enumerate(chunk)]
        model, arrays = f.model, message.arrays[MODEL]
        k = len(chunk)
        index, mask, sizes = _plan(f, chunk, configs, settings)
        active = torch.from_numpy(mask.max(axis=2))  # (steps, k): client c still has a step t
        index_t, mask_t = torch.from_numpy(index), torch.from_numpy(mask)
        counts_t = mask_t.sum(dim=2)  # (steps, k): each client's real rows at each step
        scale_t = (mask_t / counts_t.clamp(min=1.0).unsqueeze(2)).unsqueeze(3)  # 1/count on real rows, 0 on padding

        names = [n for n, _ in model.named_parameters()]
        stack = DenseStack.of(model) if f.loss in ("cross_entropy", "mse") else None
        if stack is not None and not stack.fits(f.dataset.x, f.dataset.y, f.loss):
            stack = None
        fused = stack is not None and not settings.momentum and not settings.weight_decay  # the update inside the step
        first = stack.layers[0][0] if stack is not None else None
        cut = fused and _worth_cutting(self._used_features(), arrays[first], index.shape[0])
        x_all, y_all, columns = self._data(cut=cut)
        start = dict(arrays)
        if columns is not None:  # the first layer's weights for the features the data uses (used_columns)
            start[first] = np.take(arrays[first], columns, axis=1)
        base = {n: torch.from_numpy(np.array(start[n], order="C", copy=True)) for n in names}  # any strides, writable
        params = {n: self._stacked(n, base[n], k) if stack is not None else
                  base[n].unsqueeze(0).repeat(k, *[1] * base[n].ndim).requires_grad_() for n in names}
        model.train()
        if stack is not None:
            totals = _dense_steps(DenseSteps(stack, params, f.loss, settings.lr if fused else None), params, names,
                                  settings, x_all, y_all, index_t, mask_t, scale_t, active)
        else:
            with torch.random.fork_rng(devices=[]):
                seed_torch(int(configs[0].get("seed", f.seed)) ^ int(configs[0].get("round", 0)))  # dropout draws
                totals = _vmap_steps(model, f.loss, params, names, settings, x_all, y_all, index_t, mask_t, counts_t, active)
        delta = _Deltas(params, base, None if columns is None else (first, columns, arrays[first].shape[1]))
        out: list[Outcome] = []
        for c, ins in enumerate(chunk):
            update = {n: delta(n, c).astype(arrays[n].dtype, copy=False) for n in names}
            if not all(np.isfinite(d).all() for d in update.values()):  # each checked while still in the cache
                out.append(ClientFailure(ins.client_id, FailureStage.FIT, "the local training diverged (non-finite weights)"))
                continue
            metrics = {"train_loss": float(totals[c]) / (sizes[c] * settings.epochs)}
            out.append(Reply({MODEL: update}, sizes[c], metrics, message.version))
        return out


def _plan(f: TorchClientFactory, chunk: list[Instruction], configs: list[dict], settings) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every client's batches, as TorchClient draws them (a seeded order per epoch, its own batch size, a
    last partial batch): rows (steps, clients, width) into the training set, padded with the client's own
    first row (masked out; a row of another client's, if not finite, would make NaN of the mask's zeros),
    the mask of real rows, and each client's size."""
    orders, sizes = [], []
    for ins, config in zip(chunk, configs):  # each client's own round and seed (FedBuff dispatches per client)
        idx = np.asarray(f.train[ins.client_id])
        n = len(idx)
        b = n if settings.batch_size == 0 else min(settings.batch_size, n)
        order = rng(int(config.get("seed", f.seed)), int(config.get("round", 0)), Stage.SHUFFLE, ins.client_id)
        per = -(-n // b)  # steps an epoch
        at = np.full((settings.epochs, per * b), -1, np.int64)  # positions in the client's rows; -1: padding
        for e in range(settings.epochs):
            at[e, :n] = order.permutation(n)
        orders.append((idx, at.reshape(settings.epochs * per, b)))
        sizes.append(n)
    steps, width = max(a.shape[0] for _, a in orders), max(a.shape[1] for _, a in orders)
    index = np.zeros((steps, len(chunk), width), np.int64)
    mask = np.zeros((steps, len(chunk), width), np.float32)
    for c, (idx, at) in enumerate(orders):
        real = at >= 0
        index[:, c, :] = idx[0]
        index[:at.shape[0], c, :at.shape[1]] = np.where(real, idx[np.maximum(at, 0)], idx[0])
        mask[:at.shape[0], c, :at.shape[1]] = real
    return index, mask, sizes


class _Deltas:
    """Each client's update as arrays of its own (one pass over its weights: a reply kept, as in FedBuff's
    buffer, keeps no other client's memory); a cut first layer's columns put back in their places."""

    def __init__(self, params: dict[str, torch.Tensor], base: dict[str, torch.Tensor], cut) -> None:
        self.params = {n: p.detach().numpy() for n, p in params.items()}
        self.base = {n: b.numpy() for n, b in base.items()}
        self.cut = cut
        if cut is not None:
            first, columns, features = cut
            self.where = np.full(features, len(columns))  # a column left out reads the zero column at the end
            self.where[columns] = np.arange(len(columns))
            self.buffer = np.zeros((self.base[first].shape[0], len(columns) + 1), self.base[first].dtype)

    def __call__(self, name: str, client: int) -> np.ndarray:
        if self.cut is None or name != self.cut[0]:
            return np.subtract(self.params[name][client], self.base[name])
        np.subtract(self.params[name][client], self.base[name], out=self.buffer[:, :-1])
        return np.take(self.buffer, self.where, axis=1)


def _worth_cutting(columns: np.ndarray | None, weight: np.ndarray, steps: int) -> bool:
    """Whether to leave out the features no row uses: some are, the steps save more than putting the
    columns back costs (a pass over each client's first layer: 1,000 clients of one step each ran twice
    as slowly cut), and the weights left out are all finite (a non-finite one times a zero feature is
    NaN in the sequential client)."""
    if columns is None or steps * (weight.shape[1] - len(columns)) < 2 * weight.shape[1]:
        return False
    return bool(np.isfinite(weight[:, left_out(columns, weight.shape[1])]).all())


def _dense_steps(steps: DenseSteps, params, names, settings, x_all, y_all, index, mask, scale, active) -> torch.Tensor:
    """The written-out steps (client/torch_dense.py) over every block of the plan; each client's summed loss."""
    momentum: dict[str, torch.Tensor | None] = {n: None for n in names}
    totals = torch.zeros(index.shape[1], dtype=torch.float64)
    for start, xs, ys in _blocks(x_all, y_all, index, outputs=steps.stack.outputs):
        targets = steps.targets(ys, scale[start:start + len(xs)])
        for j in range(len(xs)):
            grads = steps.step(xs[j], targets[j], scale[start + j])
            if grads is not None:
                _sgd_step(params, names, [grads.get(n) for n in names], momentum, settings, active[start + j])
        totals += steps.losses(ys, mask[start:start + len(xs)])
    return totals


def _vmap_steps(model, loss, params, names, settings, x_all, y_all, index, mask, counts, active) -> torch.Tensor:
    """``vmap(functional_call)`` under autograd over every block of the plan; each client's summed loss."""
    batched = vmap(_client_loss(model, loss), randomness="different")
    momentum: dict[str, torch.Tensor | None] = {n: None for n in names}
    totals = torch.zeros(index.shape[1], dtype=torch.float64)
    for start, xs, ys in _blocks(x_all, y_all, index):
        for j in range(len(xs)):
            t = start + j
            losses = batched(params, xs[j], ys[j], mask[t])
            grads = torch.autograd.grad((losses * active[t]).sum(), [params[n] for n in names], allow_unused=True)
            totals += losses.detach() * counts[t]
            _sgd_step(params, names, grads, momentum, settings, active[t])
    return totals


def _blocks(x_all: torch.Tensor, y_all: torch.Tensor, index: torch.Tensor, outputs: int = 0, budget: int = 32 << 20):
    """(first step, features, labels) for blocks of the steps of ``index`` (steps, clients, width): gathered
    a block at a time (up to ``budget`` bytes of features, and of ``outputs`` a row kept with them: the
    targets and outputs of DenseSteps), as one gather per step costs more than its rows."""
    steps = index.shape[0]
    row = (x_all[0].numel() + 2 * outputs) * x_all.element_size() * index[0].numel()
    block = max(1, min(steps, budget // max(row, 1)))
    for start in range(0, steps, block):
        at = index[start:start + block]
        flat = at.reshape(-1)
        yield (start, x_all.index_select(0, flat).view(*at.shape, *x_all.shape[1:]),
               y_all.index_select(0, flat).view(*at.shape, *y_all.shape[1:]))


def _client_loss(model: torch.nn.Module, loss: str):
    """One client's mean loss over its real rows, for ``vmap``."""
    def client_loss(p, x, y, m):
        out = functional_call(model, p, (x,))
        if loss == "cross_entropy":
            each = F.cross_entropy(out, y, reduction="none")
        else:
            each = F.mse_loss(out.squeeze(-1) if out.ndim == y.ndim + 1 and out.shape[-1] == 1 else out, y, reduction="none")
            if each.ndim > 1:  # several targets a row: the row's mean, so that the batch's mean is mse_loss's
                each = each.flatten(1).mean(dim=1)
        return (each * m).sum() / m.sum().clamp(min=1.0)
    return client_loss


@torch.no_grad()  # in place: the stacked parameters are large, every pass over them counts
def _sgd_step(params: dict[str, torch.Tensor], names: list[str], grads, momentum: dict, settings, active: torch.Tensor) -> None:
    """torch's SGD (momentum, weight decay) on the stacked parameters; a client without a step stays put."""
    k = len(active)
    for n, g in zip(names, grads):
        if g is None:  # a parameter the forward pass does not use: torch's SGD skips it too
            continue
        p = params[n]
        if settings.weight_decay:
            g = g.add_(p, alpha=settings.weight_decay)
        if settings.momentum:
            momentum[n] = g.clone() if momentum[n] is None else momentum[n].mul_(settings.momentum).add_(g)
            g = momentum[n]
        p.addcmul_(g, active.view(k, *[1] * (p.ndim - 1)), value=-settings.lr)
