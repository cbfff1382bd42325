"""Record-level DP-SGD in the PyTorch client through Opacus: a client's ε equals Opacus's own RDP
accountant for the steps it took, accumulates over the rounds it took part in (its ledger is its own
state, so it survives in the checkpoint), the server's config cannot switch it off, the noise really
changes the update, and what it cannot cover is refused."""

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from cohort.client.base import Hooks
from cohort.client.settings import TrainSettings
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.experiment import build, run
from cohort.server import checkpoint

DP = ["client.dp_sgd=true", "client.dp_noise_multiplier=1.1", "client.dp_max_grad_norm=1.0", "output.progress=false"]


def test_the_clients_epsilon_is_opacus_own_over_every_round_it_took_part_in(tmp_path):
    result = run(load_config(None, [*DP, "rounds=3", f"output.dir={tmp_path}"]))
    history = result.state.history
    eps_max = [h["train_dp_sgd_epsilon_max"] for h in history]
    assert eps_max == sorted(eps_max) and eps_max[0] > 0  # spent more every round
    # every client's ledger is in its own state (in the checkpoint): 3 rounds of q = B / n
    exp = build(load_config(None, DP))
    clients = checkpoint.load(result.folder / "checkpoints").clients
    assert sorted(clients) == list(range(10))
    worst = 0.0
    for cid, state in clients.items():
        ledger = state["dp_sgd"]["ledger"]
        n, b = len(exp.partition[cid]), exp.config.client.batch_size
        q = min(b, n) / n
        assert ledger.shape == (3, 3) and np.allclose(ledger[:, :2], [1.1, q])
        assert (ledger[:, 2] == int(1 / q) * exp.config.client.epochs).all()  # Opacus's steps per epoch
        accountant = RDPAccountant()
        accountant.history = [(1.1, q, int(ledger[0, 2]))] * 3
        worst = max(worst, accountant.get_epsilon(1e-5))
    assert history[-1]["train_dp_sgd_epsilon_max"] == pytest.approx(worst, rel=1e-12)


def test_the_server_cannot_switch_it_off_and_the_noise_changes_the_update():
    s = TrainSettings(dp_sgd=True, dp_noise_multiplier=2.0)
    assert s.override({"dp_sgd": False, "dp_noise_multiplier": 0.1, "lr": 0.5}) == TrainSettings(
        dp_sgd=True, dp_noise_multiplier=2.0, lr=0.5)
    exp = build(load_config(None, DP))
    noisy = build(load_config(None, [*DP, "client.dp_noise_multiplier=5.0"]))
    start = exp.initial_state().model
    a = exp.client_fn()(0).train(start, {"round": 1, "seed": 0}, Hooks()).delta
    b = noisy.client_fn()(0).train(start, {"round": 1, "seed": 0}, Hooks()).delta
    again = exp.client_fn()(0).train(start, {"round": 1, "seed": 0}, Hooks()).delta
    for k in a:
        assert a[k].tobytes() == again[k].tobytes()  # seeded: reproducible
        assert not np.allclose(a[k], b[k])  # more noise, another update


@pytest.mark.parametrize("sets, why", [
    (["server.algorithm=fedprox"], "server.algorithm = 'fedavg'"),
    (["server.algorithm=fedsgd"], "server.algorithm = 'fedavg'"),
    (["client.dp_noise_multiplier=0"], "client.dp_noise_multiplier is 0"),
    (["client.dp_delta=1"], "client.dp_delta is 1"),
])
def test_what_it_cannot_cover_is_refused(sets, why):
    with pytest.raises(ConfigError) as e:
        build(load_config(None, [*DP, *sets]))
    assert why in str(e.value)
