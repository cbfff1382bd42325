"""Clients holding fᵢ(x) = ½·aᵢ·‖x − bᵢ‖², trained by plain gradient steps: a trainer in NumPy, with
the hooks FedProx and SCAFFOLD use. Module-level so it pickles to worker processes."""

from __future__ import annotations

import numpy as np

from cohort import EvaluateResult, Hooks, Trained


class QuadraticClient:
    def __init__(self, a: float, b: np.ndarray, steps: int = 10, lr: float = 0.1, examples: int = 10) -> None:
        self.a, self.b, self.steps, self.lr, self.examples = a, np.asarray(b, np.float64), steps, lr, examples

    def train(self, arrays, config, hooks: Hooks) -> Trained:
        x0 = arrays["x"]
        x = x0.copy()
        offset = hooks.gradient_offset["x"] if hooks.gradient_offset else 0.0
        centre = hooks.anchor["x"] if hooks.anchor is not None else x0
        for _ in range(self.steps):
            grad = self.a * (x - self.b) + hooks.proximal_mu * (x - centre) + offset
            x -= self.lr * grad
        return Trained({"x": x - x0}, self.examples, self.steps, self.lr, {"loss": self.loss(x)})

    def gradient(self, arrays, config) -> Trained:
        return Trained({"x": self.a * (arrays["x"] - self.b)}, self.examples, 1, self.lr)

    def evaluate(self, arrays, config) -> EvaluateResult:
        return EvaluateResult(self.loss(arrays["x"]), self.examples)

    def loss(self, x) -> float:
        return float(0.5 * self.a * np.sum((x - self.b) ** 2))


class QuadraticClients:
    """client_fn over fixed (aᵢ, bᵢ)."""

    def __init__(self, a, b, steps: int = 10, lr: float = 0.1) -> None:
        self.a, self.b, self.steps, self.lr = list(a), [np.asarray(v, np.float64) for v in b], steps, lr

    def __call__(self, cid: int) -> QuadraticClient:
        return QuadraticClient(self.a[cid], self.b[cid], self.steps, self.lr)

    def minimiser(self) -> np.ndarray:
        a = np.asarray(self.a)[:, None]
        return (a * np.stack(self.b)).sum(axis=0) / a.sum()
