"""The vectorized backend's fast path for stacks of dense layers (logistic and linear regression, MLPs
such as McMahan's 2NN): forward and backward written out as batched matrix products over the client
axis.

``vmap(functional_call(...))`` under autograd runs such a model correctly but slowly here: a 2NN round
of 10 clients took longer vectorized than one client after another, the batching rules and the autograd
graph costing more than the small products themselves. For a ``Sequential`` of ``Flatten``, ``Linear``
and elementwise activations the gradient is three lines per layer, so it is written out: each step is
one ``baddbmm`` forward and two ``bmm`` backward per layer for every client at once, and plain SGD folds
the update into the weight gradient's product (``W.baddbmm_(dzᵀ, a, alpha=-lr)``), so no gradient is
stored. Anything else goes through ``vmap``. ``used_columns`` (the input features some row uses) serves
this path's first layer and the torch evaluator's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _activate_(kind: type | None, z: torch.Tensor) -> torch.Tensor:
    """The activation in place: the backward pass needs only its output."""
    if kind is nn.ReLU:
        return z.relu_()
    if kind is nn.Tanh:
        return z.tanh_()
    if kind is nn.Sigmoid:
        return z.sigmoid_()
    return z


def _through(kind: type | None, a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """The gradient at a layer's pre-activation from the one at its output ``a`` (in place on da)."""
    if kind is nn.ReLU:  # autograd's own ReLU backward: one pass, no mask tensor
        return torch.ops.aten.threshold_backward(da, a, 0)
    if kind is nn.Tanh:
        return da.mul_(1 - a * a)
    if kind is nn.Sigmoid:
        return da.mul_(a * (1 - a))
    return da


def _hooked(m: nn.Module) -> bool:
    """A module with forward or backward hooks: the written-out step would skip them."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


@dataclass(frozen=True)
class DenseStack:
    """A model that is Flatten? then (Linear, activation*)+: the parameter names of each Linear and the
    activations after it."""

    layers: tuple[tuple[str, str | None, tuple[type, ...]], ...]  # (weight name, bias name or None, activations)
    flatten: bool
    inputs: int  # the first layer's width
    outputs: int  # the last layer's width

    @classmethod
    def of(cls, model: nn.Module) -> DenseStack | None:
        """The model's dense stack, or None when it is anything else (then ``vmap`` runs it): every
        position of the Sequential (``_modules``: a module placed twice runs twice, though
        ``named_children`` lists it once) a distinct plain module without hooks, each Linear's weight
        and bias its own parameters (not a parametrization such as weight norm)."""
        if type(model) is not nn.Sequential:
            return None
        modules = list(model._modules.items())
        if len({id(m) for _, m in modules}) != len(modules) or any(_hooked(m) for m in (model, *model.modules())):
            return None
        params = dict(model.named_parameters())
        flatten = False
        if modules and type(modules[0][1]) is nn.Flatten:
            f = modules[0][1]
            if (f.start_dim, f.end_dim) != (1, -1):
                return None
            flatten, modules = True, modules[1:]
        layers: list[tuple[str, str | None, list[type]]] = []
        inputs = outputs = 0
        for name, m in modules:
            if type(m) is nn.Linear:
                w, b = f"{name}.weight", f"{name}.bias" if m.bias is not None else None
                if params.get(w) is not m.weight or (b is not None and params.get(b) is not m.bias):
                    return None
                inputs = inputs or m.in_features
                layers.append((w, b, []))
                outputs = m.out_features
            elif type(m) in ACTIVATIONS and layers:
                if type(m) is not nn.Identity:
                    layers[-1][2].append(type(m))
            else:
                return None
        if not layers or any(len(acts) > 1 for _, _, acts in layers):
            return None
        return cls(tuple((w, b, tuple(acts)) for w, b, acts in layers), flatten, inputs, outputs)

    def fits(self, x, y, loss: str) -> bool:
        """Whether the data (numpy arrays or tensors) is what the written-out step assumes: rows of as many
        features as the first layer takes (flattened, or one dimension already), and for mse one output
        per target value. Data that does not fit goes to ``vmap``, which fails as the model would."""
        if x.ndim < 2 or (not self.flatten and x.ndim != 2) or math.prod(x.shape[1:]) != self.inputs:
            return False
        return loss != "mse" or (y.ndim == 1 and self.outputs == 1) or (y.ndim == 2 and y.shape[1] == self.outputs)


class DenseSteps:
    """One slice's steps: every client's forward and backward pass at once. With ``lr``, plain SGD is
    applied in place inside the step and no gradient is kept; without, ``step`` returns the gradients
    of each client's mean loss. The outputs are kept, so the losses are worked out once a block of steps:
    a step is as few small tensor operations as it can be, which is most of its time at these sizes."""

    def __init__(self, stack: DenseStack, params: dict[str, torch.Tensor], loss: str, lr: float | None) -> None:
        self.stack, self.params, self.loss, self.lr = stack, params, loss, lr
        # (weight name, bias name, their views for the forward pass, activation); the views follow the updates
        self.layers = [(w, b, params[w].transpose(1, 2), params[b].unsqueeze(1) if b else None, kinds[0] if kinds else None)
                       for w, b, kinds in stack.layers]
        self.outputs: list[torch.Tensor] = []  # each step's output since the last call of losses

    def targets(self, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """What a block of steps' output is compared with, from y (steps, clients, batch[, targets]) and
        scale (steps, clients, batch, 1): 1 / the client's real rows on its real rows, 0 on padding.
        Cross-entropy: the one-hot labels times scale (softmax · scale minus it is the gradient at the
        logits of each client's mean loss); mse: the targets, one per output."""
        if self.loss == "cross_entropy":
            return torch.nn.functional.one_hot(y, self.stack.outputs).to(scale.dtype).mul_(scale)
        return y.unsqueeze(-1) if y.ndim == 3 else y

    def step(self, x: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One step for every client: x (clients, batch, ...), ``target`` this step's rows of
        :meth:`targets`, scale (clients, batch, 1)."""
        k, b = scale.shape[:2]
        a = x.reshape(k, b, -1) if self.stack.flatten else x
        acts = [a]
        for _, _, wt, bias_row, kind in self.layers:
            a = _activate_(kind, torch.baddbmm(bias_row, a, wt) if bias_row is not None else torch.bmm(a, wt))
            acts.append(a)
        self.outputs.append(a)
        if self.loss == "cross_entropy":
            dz = a.softmax(dim=2).mul_(scale).sub_(target)
        else:  # mse, as torch.nn.functional.mse_loss: the mean over every element of the batch
            dz = (a - target).mul_(scale).mul_(2.0 / a.shape[2])
        grads: dict[str, torch.Tensor] | None = None if self.lr is not None else {}
        for i in range(len(self.layers) - 1, -1, -1):
            w, bias, _, _, kind = self.layers[i]
            dz = _through(kind, acts[i + 1], dz)  # back through the activation
            da = torch.bmm(dz, self.params[w]) if i > 0 else None  # before the weight moves
            if grads is None:
                self.params[w].baddbmm_(dz.transpose(1, 2), acts[i], alpha=-self.lr)
                if bias:
                    self.params[bias].sub_(dz.sum(dim=1), alpha=self.lr)
            else:
                grads[w] = torch.bmm(dz.transpose(1, 2), acts[i])
                if bias:
                    grads[bias] = dz.sum(dim=1)
            dz = da
        return grads

    def losses(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each client's summed loss over its real rows of the steps since the last call (a block's, so
        that the kept outputs stay as small as its rows), in float64, from those steps' y (steps, clients,
        batch[, targets]) and mask (steps, clients, batch)."""
        out = torch.stack(self.outputs)  # (steps, clients, batch, outputs)
        self.outputs.clear()
        if self.loss == "cross_entropy":
            each = -out.log_softmax(dim=3).gather(3, y.unsqueeze(3)).squeeze(3)
        else:
            target = y.unsqueeze(3) if y.ndim == 3 else y
            each = (out - target).square_().mean(dim=3)
        return (each.double() * mask).sum(dim=(0, 2))


def used_columns(x: np.ndarray, align: int = 16) -> np.ndarray | None:
    """The input features some row of ``x`` (rows, features) has non-zero, as an index, padded with
    unused ones to a multiple of ``align``; None when that is every feature, or none.

    A feature that is zero in every training row adds nothing to a dense first layer's output and gets
    a zero gradient, so under plain SGD its weight column never moves: the step can leave it out
    (MNIST's blank border, 67 of 784 pixels; a bag of words' absent terms). The padding keeps the
    weight rows aligned: 717 columns ran slower here than all 784, 720 ran 6% faster."""
    used = (x != 0).any(axis=0)
    keep = np.flatnonzero(used)
    pad = (-len(keep)) % align
    if len(keep) == 0 or len(keep) + pad >= len(used):  # nothing used: no model to speak of, left as it is
        return None
    return np.concatenate([keep, np.flatnonzero(~used)[:pad]])


def left_out(columns: np.ndarray, features: int) -> np.ndarray:
    """The mask of the ``features`` that ``columns`` (from :func:`used_columns`) leaves out."""
    outside = np.ones(features, bool)
    outside[columns] = False
    return outside
