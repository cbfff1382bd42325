"""A federation in plain NumPy, through the Python API: no torch in the client at all.

Eight clients each hold noisy samples of y = 3·x0 − 2·x1 + 1, in different regions of input space.
Each trains a linear model by a few steps of gradient descent and returns its delta; FedAvg combines.
Run:  .venv/bin/python examples/numpy_client.py
"""

import numpy as np

import cohort


class LinearClient:
    """Implements the cohort.Client protocol: fit and evaluate over named arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lr: float = 0.1, steps: int = 5) -> None:
        self.x, self.y, self.lr, self.steps = x, y, lr, steps

    def fit(self, arrays, config):
        w, b = arrays["w"].copy(), arrays["b"].copy()
        for _ in range(self.steps):
            residual = self.x @ w + b - self.y  # (n,)
            w -= self.lr * 2 * self.x.T @ residual / len(self.y)
            b -= self.lr * 2 * residual.mean()
        delta = {"w": w - arrays["w"], "b": b - arrays["b"]}  # trained minus received
        return cohort.FitResult(delta, num_examples=len(self.y), metrics={"train_mse": float((residual**2).mean())})

    def evaluate(self, arrays, config):
        mse = float(((self.x @ arrays["w"] + arrays["b"] - self.y) ** 2).mean())
        return cohort.EvaluateResult(mse, len(self.y))


def make_clients(num_clients: int = 8, seed: int = 0) -> list[LinearClient]:
    g = np.random.default_rng(seed)
    clients = []
    for c in range(num_clients):
        x = g.normal(loc=(c - num_clients / 2) / 4, scale=1.0, size=(50 + 10 * c, 2))  # (n, 2)
        y = x @ np.array([3.0, -2.0]) + 1.0 + 0.05 * g.normal(size=len(x))
        clients.append(LinearClient(x.astype(np.float32), y.astype(np.float32)))
    return clients


def main(rounds: int = 60) -> cohort.ServerState:
    clients = make_clients()
    start = {"w": np.zeros(2, np.float32), "b": np.zeros((), np.float32)}
    settings = cohort.LoopSettings(rounds=rounds, fraction=0.5, federated_fraction=1.0)
    state, _ = cohort.simulate(clients.__getitem__, len(clients), start, settings, algorithm=cohort.fedavg())
    last = state.history[-1]
    print(f"after {state.round} rounds: w = {state.arrays['w'].round(3)}, b = {float(state.arrays['b']):.3f}, "
          f"federated mse = {last['federated_loss']:.4f}")
    return state


if __name__ == "__main__":
    main()
