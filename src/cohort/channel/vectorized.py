"""Vectorized clients: a cohort of small-model clients trained at once with ``torch.func``.

Every client of a fit task gets its own copy of the parameters, stacked along a leading client axis;
one step runs every client's batch through ``vmap(functional_call(model, ...))``, so ten or a thousand
clients cost a handful of large tensor operations instead of thousands of small ones. Each client goes
through the same batches as in the sequential backend (its seeded order, its own batch size, a last
partial batch), padded to the largest batch and masked; a client whose steps are done stops moving.
The steps are plain SGD with momentum and weight decay, written out on the stacked tensors.

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
from cohort.channel.dense import DenseStack
from cohort.channel.inprocess import InProcessChannel, torch_threads
from cohort.channel.runtime import Outcome
from cohort.client.torch import LazyTorchClients, TorchClientFactory, seed_torch, to_tensors
from cohort.core.errors import ConfigError
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
        self._features: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None

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
        if isinstance(message.config.get("compression"), dict) or message.config.get("secagg"):
            return "compression or secure aggregation"
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

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is None:  # the whole training set once, as the torch client would convert it
            ds = self.client_fn.dataset
            self._features, self._targets = to_tensors(ds.x, ds.y, ds.x_scale)
        return self._features, self._targets

    def _train(self, message: Message, chunk: list[Instruction], configs: list[dict]) -> list[Outcome]:
        f: TorchClientFactory = self.client_fn
        settings = f.settings.override(configs[0])  # the same for every client of the slice (checked by run)
        x_all, y_all = self._data()
        model, arrays = f.model, message.arrays[MODEL]
        k = len(chunk)
        # every client's batches, as TorchClient draws them: a seeded order per epoch, its own batch size
        plans, sizes = [], []
        for ins, config in zip(chunk, configs):  # each client's own round and seed (FedBuff dispatches per client)
            idx = np.asarray(f.train[ins.client_id])
            n = len(idx)
            b = n if settings.batch_size == 0 else min(settings.batch_size, n)
            order = rng(int(config.get("seed", f.seed)), int(config.get("round", 0)), Stage.SHUFFLE, ins.client_id)
            plans.append([idx[perm[s:s + b]] for perm in (order.permutation(n) for _ in range(settings.epochs))
                          for s in range(0, n, b)])
            sizes.append(n)
        steps = max(len(p) for p in plans)
        width = max(len(batch) for p in plans for batch in p)
        index = np.zeros((steps, k, width), np.int64)
        mask = np.zeros((steps, k, width), np.float32)
        for c, plan in enumerate(plans):
            for t, batch in enumerate(plan):
                index[t, c, :len(batch)] = batch
                mask[t, c, :len(batch)] = 1.0
        active = torch.from_numpy(mask.max(axis=2))  # (steps, k): client c still has a step t
        index_t, mask_t = torch.from_numpy(index), torch.from_numpy(mask)
        counts_t = mask_t.sum(dim=2)  # (steps, k): each client's real rows at each step
        scale_t = (mask_t / counts_t.clamp(min=1.0).unsqueeze(2)).unsqueeze(3)  # 1/count on real rows, 0 on padding

        names = [n for n, _ in model.named_parameters()]
        stack = DenseStack.of(model) if f.loss in ("cross_entropy", "mse") else None
        if stack is not None and not stack.fits(x_all, y_all, f.loss):
            stack = None
        params = {n: torch.from_numpy(np.array(arrays[n], copy=True)).unsqueeze(0).repeat(k, *[1] * arrays[n].ndim)
                  .requires_grad_(stack is None) for n in names}
        fused = stack is not None and not settings.momentum and not settings.weight_decay  # the update inside the step
        momentum: dict[str, torch.Tensor | None] = {n: None for n in names}
        batched = vmap(_client_loss(model, f.loss), randomness="different") if stack is None else None
        totals = torch.zeros(k, dtype=torch.float64)  # each client's summed training loss
        model.train()
        with torch.random.fork_rng(devices=[]):
            seed_torch(int(configs[0].get("seed", f.seed)) ^ int(configs[0].get("round", 0)))  # dropout draws
            for t, x, y in _batches(x_all, y_all, index_t):
                m = mask_t[t]
                if stack is not None:
                    sums, grads = stack.step(params, x, y, m, scale_t[t], f.loss, settings.lr if fused else None)
                    listed = None if grads is None else [grads.get(n) for n in names]
                else:
                    losses = batched(params, x, y, m)
                    listed = torch.autograd.grad((losses * active[t]).sum(), [params[n] for n in names], allow_unused=True)
                    sums = losses.detach() * counts_t[t]
                totals += sums
                if listed is not None:
                    _sgd_step(params, names, listed, momentum, settings, active[t])
        out: list[Outcome] = []
        for c, ins in enumerate(chunk):
            delta = {n: params[n][c].detach().numpy() - arrays[n] for n in names}
            if not all(np.isfinite(d).all() for d in delta.values()):
                out.append(ClientFailure(ins.client_id, FailureStage.FIT, "the local training diverged (non-finite weights)"))
                continue
            metrics = {"train_loss": float(totals[c]) / (sizes[c] * settings.epochs)}
            out.append(Reply({MODEL: {n: delta[n].astype(arrays[n].dtype, copy=False) for n in names}}, sizes[c], metrics,
                             message.version))
        return out


def _batches(x_all: torch.Tensor, y_all: torch.Tensor, index: torch.Tensor, budget: int = 32 << 20):
    """(step, features, labels) for every step of ``index`` (steps, clients, width): gathered a block of
    steps at a time (up to ``budget`` bytes of features), as one gather per step costs more than its rows."""
    steps = index.shape[0]
    row = x_all[0].numel() * x_all.element_size() * index[0].numel()
    block = max(1, min(steps, budget // max(row, 1)))
    for start in range(0, steps, block):
        at = index[start:start + block]
        flat = at.reshape(-1)
        xs = x_all.index_select(0, flat).view(*at.shape, *x_all.shape[1:])
        ys = y_all.index_select(0, flat).view(*at.shape, *y_all.shape[1:])
        for j in range(len(at)):
            yield start + j, xs[j], ys[j]


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
