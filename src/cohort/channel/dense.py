"""The vectorized backend's fast path for stacks of dense layers (logistic and linear regression, MLPs
such as McMahan's 2NN): forward and backward written out as batched matrix products over the client
axis.

``vmap(functional_call(...))`` under autograd runs such a model correctly but slowly here: a 2NN round
of 10 clients took longer vectorized than one client after another, the batching rules and the autograd
graph costing more than the small products themselves. For a ``Sequential`` of ``Flatten``, ``Linear``
and elementwise activations the gradient is three lines per layer, so it is written out: each step is
one ``baddbmm`` forward and two ``bmm`` backward per layer for every client at once, and plain SGD folds
the update into the weight gradient's product (``W.baddbmm_(dzᵀ, a, alpha=-lr)``), so no gradient is
stored. Anything else goes through ``vmap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _activate(kind: type | None, z: torch.Tensor) -> torch.Tensor:
    if kind is nn.ReLU:
        return z.relu()
    if kind is nn.Tanh:
        return z.tanh()
    if kind is nn.Sigmoid:
        return z.sigmoid()
    return z


def _through(kind: type | None, z: torch.Tensor, a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """The gradient at a layer's pre-activation z from the one at its output a (in place on da)."""
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
        outputs = 0
        for name, m in modules:
            if type(m) is nn.Linear:
                w, b = f"{name}.weight", f"{name}.bias" if m.bias is not None else None
                if params.get(w) is not m.weight or (b is not None and params.get(b) is not m.bias):
                    return None
                layers.append((w, b, []))
                outputs = m.out_features
            elif type(m) in ACTIVATIONS and layers:
                if type(m) is not nn.Identity:
                    layers[-1][2].append(type(m))
            else:
                return None
        if not layers or any(len(acts) > 1 for _, _, acts in layers):
            return None
        return cls(tuple((w, b, tuple(acts)) for w, b, acts in layers), flatten, outputs)

    def fits(self, x: torch.Tensor, y: torch.Tensor, loss: str) -> bool:
        """Whether the data is what the written-out step assumes: rows of features (flattened, or one
        dimension already), and for mse one output per target value."""
        if not self.flatten and x.ndim != 2:
            return False
        return loss != "mse" or (y.ndim == 1 and self.outputs == 1) or (y.ndim == 2 and y.shape[1] == self.outputs)

    def step(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
             scale: torch.Tensor, loss: str, lr: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """One step for every client: x (clients, batch, ...), y (clients, batch), mask (clients, batch),
        scale (clients, batch, 1): 1 / the client's real rows on its real rows, 0 on padding. Returns
        each client's summed loss over its real rows and, when ``lr`` is None, the gradients of its mean
        loss; with ``lr`` the plain SGD update is applied in place and no gradient is kept."""
        k, b = mask.shape
        a = x.reshape(k, b, -1) if self.flatten else x
        acts, zs = [a], []
        for w, bias, kinds in self.layers:
            wt = params[w].transpose(1, 2)
            z = torch.baddbmm(params[bias].unsqueeze(1), a, wt) if bias else torch.bmm(a, wt)
            a = _activate(kinds[0] if kinds else None, z)
            zs.append(z)
            acts.append(a)
        out = acts[-1]
        if loss == "cross_entropy":
            logp = out.log_softmax(dim=2)
            rows = logp.gather(2, y.unsqueeze(2)).squeeze(2)  # minus each row's loss
            dz = logp.exp_()
            dz.scatter_add_(2, y.unsqueeze(2), torch.full_like(dz[..., :1], -1.0))
            dz.mul_(scale)
            sums = -(rows * mask).sum(dim=1)
        else:  # mse, as torch.nn.functional.mse_loss: the mean over every element of the batch
            target = y.unsqueeze(2) if y.ndim == 2 else y
            diff = out - target
            sums = ((diff * diff).mean(dim=2) * mask).sum(dim=1)
            dz = diff.mul_(scale * (2.0 / out.shape[2]))
        grads: dict[str, torch.Tensor] | None = None if lr is not None else {}
        for i in range(len(self.layers) - 1, -1, -1):
            w, bias, kinds = self.layers[i]
            dz = _through(kinds[0] if kinds else None, zs[i], acts[i + 1], dz)  # back through the activation
            da = torch.bmm(dz, params[w]) if i > 0 else None  # before the weight moves
            if grads is None:
                params[w].baddbmm_(dz.transpose(1, 2), acts[i], alpha=-lr)
                if bias:
                    params[bias].sub_(dz.sum(dim=1), alpha=lr)
            else:
                grads[w] = torch.bmm(dz.transpose(1, 2), acts[i])
                if bias:
                    grads[bias] = dz.sum(dim=1)
            dz = da
        return sums, grads
