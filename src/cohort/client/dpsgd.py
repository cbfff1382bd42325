"""Record-level DP-SGD in the PyTorch client, through Opacus (Abadi et al. 2016).

With ``[client] dp_sgd = true`` a client's local training draws Poisson-sampled batches (rate
B / n), clips every example's gradient to ``dp_max_grad_norm``, adds Gaussian noise of standard
deviation ``dp_noise_multiplier · dp_max_grad_norm`` to their sum, and steps; all of it is Opacus's
(``GradSampleModule``, ``DPOptimizer``, ``DPDataLoader``), seeded from the run's streams. Each round's
steps go into the client's own state as a ledger, and the client reports its cumulative
``dp_sgd_epsilon`` at ``dp_delta`` from Opacus's RDP accountant over the whole ledger: the guarantee
for any one of its records, over every round it took part in.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import torch

from cohort.core.errors import ConfigError

GROUP = "dp_sgd"
RAW = ("dp_sgd_noise_multiplier", "dp_sgd_sample_rate", "dp_sgd_steps", "dp_sgd_delta")


def train_private(model, x, y, loss_fn, s, generator: torch.Generator, make_optimizer) -> tuple[float, int, dict[str, float]]:
    """Local DP-SGD for ``s.epochs`` epochs. Returns (mean loss, steps, the facts the accountant needs)."""
    try:
        from opacus import GradSampleModule
        from opacus.data_loader import DPDataLoader
        from opacus.optimizers import DPOptimizer
    except ImportError as e:
        raise ConfigError("client.dp_sgd needs Opacus: pip install 'cohort[opacus]'") from e
    n = len(x)
    batch = n if s.batch_size == 0 else min(s.batch_size, n)
    rate = batch / n
    loader = DPDataLoader(torch.utils.data.TensorDataset(x, y), sample_rate=rate, generator=generator)
    private = GradSampleModule(model)
    optimizer = DPOptimizer(make_optimizer(private, s), noise_multiplier=s.dp_noise_multiplier,
                            max_grad_norm=s.dp_max_grad_norm, expected_batch_size=batch, generator=generator)
    private.train()
    total, seen, steps = 0.0, 0, 0
    quiet = warnings.catch_warnings()
    quiet.__enter__()  # Opacus's per-example hooks make torch warn at every backward pass on input-less graphs
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    try:
        for _ in range(s.epochs):
            for xb, yb in loader:
                optimizer.zero_grad(set_to_none=True)
                if len(xb):
                    loss = loss_fn(private(xb), yb)
                    loss.backward()
                    total += loss.item() * len(xb)
                    seen += len(xb)
                optimizer.step()  # an empty Poisson batch still takes a (noise-only) step, as the analysis says
                steps += 1
    finally:
        private._close()  # the per-example hooks come off: the model is plain again
        quiet.__exit__(None, None, None)
    facts = {"dp_sgd_noise_multiplier": float(s.dp_noise_multiplier), "dp_sgd_sample_rate": float(rate),
             "dp_sgd_steps": float(steps), "dp_sgd_delta": float(s.dp_delta)}
    return total / max(seen, 1), steps, facts


def account(reply, state):
    """Fold a DP-SGD round's facts into the client's ledger (its state) and report its cumulative ε."""
    from opacus.accountants import RDPAccountant

    metrics, facts = dict(reply.metrics), dict(reply.facts)
    z, q, steps, delta = (facts.pop(k) for k in RAW)
    own = dict(state or {})
    ledger = own.get(GROUP, {}).get("ledger", np.zeros((0, 3)))
    ledger = np.vstack([ledger, [[z, q, steps]]])
    accountant = RDPAccountant()
    accountant.history = [(float(a), float(b), int(c)) for a, b, c in ledger]
    metrics["dp_sgd_epsilon"] = float(accountant.get_epsilon(delta))
    metrics["dp_sgd_delta"] = delta
    own[GROUP] = {"ledger": ledger}
    return replace(reply, metrics=metrics, facts=facts), own
