"""The pieces a torch client is made of, as plain functions: seeding, tensors from numpy, local
epochs under an algorithm's hooks, FedSGD's full gradient, evaluation, and loading named arrays into a
model. :mod:`cohort.client.torch` builds the client, its factories and the evaluator from them.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cohort.client.base import Hooks
from cohort.client.settings import TrainSettings
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, the one cohort's training draws from (dropout, initialization).
    Not ``torch.manual_seed``: that also queues a lazy seeding call for each accelerator backend (CUDA,
    XPU, MTIA), and each formats a stack trace, about 0.4 ms per client on this machine, with the CPU
    generator left in the same state."""
    torch.default_generator.manual_seed(seed)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    return F.mse_loss(output, target)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": _mse,
}


def loss_for_task(task: str) -> str:
    return "cross_entropy" if task == "classification" else "mse"


def to_tensors(x: np.ndarray, y: np.ndarray, x_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features (times ``x_scale``) and labels (int64) or targets (float32) as torch tensors."""
    x, y = (a if a.flags.writeable else a.copy() for a in (x, y))  # torch cannot view read-only memory
    viewed = torch.from_numpy(np.asarray(x, order="C"))
    xt = viewed.to(torch.float32)
    if x_scale != 1.0:  # in place only on a copy: float32 x is viewed, and the caller's array must not change
        xt = xt * x_scale if xt is viewed else xt.mul_(x_scale)
    yt = torch.from_numpy(np.asarray(y, order="C"))
    yt = yt.to(torch.int64) if yt.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16) else yt.to(torch.float32)
    return xt, yt


def make_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """torch's optimizer for ``s`` (Opacus wraps one of these for DP-SGD)."""
    if s.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


class SgdSteps:
    """torch's SGD step without the optimizer object: ``torch.optim.sgd.sgd``, the function
    ``torch.optim.SGD.step`` calls, on the same lists, so the arithmetic and the bits are the same. Why:
    the optimizer object's first ``zero_grad`` or ``step`` imports ``torch._dynamo`` to wrap itself,
    about 2 s of every client process's start here; this is all a client's local SGD needs."""

    def __init__(self, model: torch.nn.Module, s: TrainSettings) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = s.lr, s.momentum, s.weight_decay
        self.buffers: dict[int, torch.Tensor | None] = {}  # momentum, by parameter (as SGD's state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.sgd import sgd

        params = [p for p in self.params if p.grad is not None]
        buffers = [self.buffers.get(id(p)) for p in params]
        sgd(params, [p.grad for p in params], buffers, weight_decay=self.weight_decay, momentum=self.momentum,
            lr=self.lr, dampening=0.0, nesterov=False, maximize=False, has_sparse_grad=False, foreach=None)
        if self.momentum != 0:
            for p, b in zip(params, buffers):
                self.buffers[id(p)] = b


def local_optimizer(model: torch.nn.Module, s: TrainSettings):
    """What a client's local epochs step with: :class:`SgdSteps` for SGD, torch's Adam otherwise."""
    return SgdSteps(model, s) if s.optimizer == "sgd" else make_optimizer(model, s)


def _corrections(model: torch.nn.Module, anchor: NamedArrays, hooks: Hooks) -> list[tuple[torch.Tensor, Any, Any]]:
    """(parameter, anchor tensor or None, offset tensor or None) for every parameter a hook touches."""
    out = []
    offset = hooks.gradient_offset or {}
    for name, p in model.named_parameters():
        a = torch.from_numpy(np.array(anchor[name], copy=True)) if hooks.proximal_mu else None
        o = torch.from_numpy(np.asarray(offset[name], dtype=np.float32).copy()).to(p.dtype) if name in offset else None
        if a is not None or o is not None:
            out.append((p, a, o))
    return out


def train_epochs(model, x, y, loss_fn, s: TrainSettings, shuffle: np.random.Generator,
                 hooks: Hooks = Hooks(), anchor: NamedArrays | None = None) -> tuple[float, int]:
    """Local SGD/Adam: ``s.epochs`` passes in a seeded order, a last partial batch included, each
    step's gradient corrected as ``hooks`` say. Returns the mean loss and the number of steps."""
    n = len(x)
    b = n if s.batch_size == 0 else min(s.batch_size, n)
    with image_layout(model, x) as layout:
        optimizer = local_optimizer(model, s)
        corrections = [] if hooks.plain else _corrections(model, anchor or {}, hooks)
        return _epochs(model, x, y, loss_fn, s, shuffle, b, layout, optimizer, corrections, hooks.proximal_mu)


def _epochs(model, x, y, loss_fn, s: TrainSettings, shuffle, b: int, layout, optimizer, corrections, mu) -> tuple[float, int]:
    n = len(x)
    model.train()
    total, steps = 0.0, 0
    for _ in range(s.epochs):
        perm = torch.from_numpy(shuffle.permutation(n))
        xs, ys = x[perm].contiguous(memory_format=layout), y[perm]  # one gather per epoch; batches below are views
        for start in range(0, n, b):
            xb, yb = xs[start : start + b], ys[start : start + b]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if corrections:
                with torch.no_grad():
                    for p, a, o in corrections:  # FedProx: + μ(w − w_received); SCAFFOLD: + (c − cᵢ)
                        if a is not None:
                            p.grad.add_(p - a, alpha=mu)
                        if o is not None:
                            p.grad.add_(o)
            optimizer.step()
            steps += 1
            total += loss.item() * len(xb)  # a CPU scalar read: cheaper than tensor arithmetic per step
    return total / (n * s.epochs), steps


def full_gradient(model, x, y, loss_fn, batch_size: int) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean loss over all of (x, y), accumulated over batches. Mean loss."""
    n = len(x)
    b = n if batch_size == 0 else min(batch_size, n)
    with image_layout(model, x) as layout:  # the gradients come back in the plain layout with the model
        model.train()
        model.zero_grad(set_to_none=True)
        x = x.contiguous(memory_format=layout)
        total = 0.0
        for start in range(0, n, b):
            xb, yb = x[start : start + b], y[start : start + b]
            loss = loss_fn(model(xb), yb)
            (loss * (len(xb) / n)).backward()
            total += loss.item() * len(xb)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return grads, total / n


_TAKES_CHANNELS_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(training, image shape): bool}


def takes_channels_last(model: torch.nn.Module, x: torch.Tensor, training: bool = True) -> bool:
    """Whether ``model`` runs on images ``x`` (N, C, H, W) in the channels-last layout, in training (a
    forward and a backward) or in evaluation: convolutions over images only, a pass that accepts the
    layout (``x.view(len(x), -1)`` after a convolution does not) and draws no random number (dropout
    fills its mask in memory order, so the layout would change the draws). Tried once per model, mode
    and image shape, on a copy of the model in a random stream of its own: nothing of the model's or of
    the client's stream moves."""
    if x.ndim != 4 or len(x) == 0 or not is_image_model(model):
        return False
    tried = _TAKES_CHANNELS_LAST.setdefault(model, {})
    key = (training, tuple(x.shape[1:]))
    if key not in tried:
        tried[key] = _try_channels_last(model, x[:2], training)
    return tried[key]


def _try_channels_last(model: torch.nn.Module, x: torch.Tensor, training: bool) -> bool:
    with torch.random.fork_rng(devices=[]):
        before = torch.get_rng_state()
        try:
            trial = copy.deepcopy(model).to(memory_format=torch.channels_last).train(training)
            with torch.set_grad_enabled(training):
                out = trial(x.contiguous(memory_format=torch.channels_last))
                if training:
                    out.float().sum().backward()
        except Exception:  # whatever it is, the plain layout is what the model was written for
            return False
        return torch.equal(before, torch.get_rng_state())


@contextmanager
def image_layout(model: torch.nn.Module, x: torch.Tensor):
    """Train a convolutional net in channels-last, oneDNN's fast layout here (mnist_cnn's client fit 5%
    faster on one thread; 13 to 18% in a bare loop of its steps at batch 10 to 64), and hand it back in the
    plain one, so that its state (parameters, gradients) reads out as C-ordered arrays. Yields the memory
    format to give the inputs."""
    if not takes_channels_last(model, x):
        yield torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def is_convolutional(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())


def is_image_model(model: torch.nn.Module) -> bool:
    """Convolutions over images only (Conv2d): what the channels-last layout is for."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return bool(convs) and all(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in convs)


def evaluation_batch(model: torch.nn.Module) -> int:
    """Rows per forward pass in evaluation. Dense layers gain from large products; convolutions here
    run 1.5 to 2 times faster in batches of 64 than of 1,024 (the activations stay in cache;
    ``bench/vs_flower.py``'s CNN rounds were mostly the test set's evaluation)."""
    return 64 if is_convolutional(model) else 1024


@torch.no_grad()
def evaluate_model(model, x, y, loss: str, batch_size: int | None = None) -> tuple[float, int, dict[str, float]]:
    """Mean loss over (x, y); accuracy for classification, R² for regression."""
    model.eval()
    batch_size = batch_size or evaluation_batch(model)
    loss_fn = LOSSES[loss]
    n = len(x)
    total_loss, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        total_loss += float(loss_fn(out, yb)) * len(xb)
        if loss == "cross_entropy":
            correct += int((out.argmax(dim=-1) == yb).sum())
    if loss == "cross_entropy":
        return total_loss / n, n, {"accuracy": correct / n}
    variance = float(y.double().var(unbiased=False)) if n > 1 else 0.0
    return total_loss / n, n, ({"r2": 1.0 - (total_loss / n) / variance} if variance > 0 else {})


def _plain_loading(model: torch.nn.Module) -> bool:
    """No module changes how it loads (a load hook, its own ``_load_from_state_dict``): then a copy into
    each state tensor is exactly what ``load_state_dict`` does."""
    if model._load_state_dict_pre_hooks or model._load_state_dict_post_hooks:
        return False
    for m in model.modules():
        own = type(m)._load_from_state_dict not in _PLAIN_LOADERS  # batch norm's only fills in a key older files lack
        if own or m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks:
            return False
    return True


_PLAIN_LOADERS = (torch.nn.Module._load_from_state_dict, torch.nn.modules.batchnorm._NormBase._load_from_state_dict)


def load_arrays(model: torch.nn.Module, arrays: NamedArrays) -> None:
    """Copy named arrays into the model; a mismatch names the offending entries. The arrays may be
    read-only (a broadcast): they are only read, as load_state_dict copies."""
    state = model.state_dict()  # detached tensors sharing the parameters' memory
    if _plain_loading(model) and state.keys() == arrays.keys() and all(isinstance(a, np.ndarray) and a.shape == tuple(state[n].shape)
                                             for n, a in arrays.items()):
        try:  # what load_state_dict does (an in-place copy), through numpy: a quarter of its time per client
            for name, t in state.items():
                np.copyto(t.numpy(), arrays[name], casting="same_kind")
            return
        except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16) or will not cast: torch's own path
            pass
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {name: torch.from_numpy(np.asarray(a)) for name, a in arrays.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"the arrays do not fit the model: {e}") from e
