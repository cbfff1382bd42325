"""``simulate``: a federation on this machine in one call, for scripts and notebooks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cohort.algorithms.base import Algorithm
from cohort.algorithms.fedavg import fedavg
from cohort.channel.base import SimulationChannel
from cohort.client.base import ClientFn
from cohort.client.store import ClientStateStore
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.server.loop import Evaluate, LoopSettings, OnRound, run
from cohort.server.state import ServerState, initial_state
from cohort.channel import BACKENDS  # the one table of backends: the config checks against it too


def make_channel(client_fn: ClientFn, algorithm: Algorithm, backend: str = "inprocess", *, workers: int = 0,
                 threads: int = 1, states: ClientStateStore | None = None, ray_address: str = "") -> SimulationChannel:
    """The simulation channel ``backend`` names: "inprocess", "processes", "vectorized" (plain local SGD of a
    whole cohort at once; other clients and tasks as "inprocess") or "ray" (the ``ray`` extra)."""
    kind = BACKENDS.get(backend)
    if kind is not None:
        return kind.build(client_fn, algorithm.client, workers=workers, threads=threads, states=states, address=ray_address)
    raise ConfigError(f"backend is {backend!r}; expected one of {', '.join(BACKENDS)}")


def simulate(
    client_fn: ClientFn,
    num_clients: int,
    arrays: NamedArrays,
    settings: LoopSettings,
    *,
    algorithm: Algorithm | None = None,
    evaluate: Evaluate | None = None,
    on_round: Iterable[OnRound] = (),
    backend: str = "inprocess",
    workers: int = 0,
    threads: int = 1,
    seed: int = 0,
    reported: Iterable[str] | None = None,
) -> tuple[ServerState, str]:
    """Run ``settings.rounds`` rounds of ``algorithm`` (default FedAvg) from ``arrays`` over clients
    ``0..num_clients-1`` built by ``client_fn``; ``backend`` is "inprocess" or "processes" (then
    ``client_fn`` must pickle). ``reported``, if given, lists the metrics the run reports, so a target
    on any other metric is refused now rather than never reached. Returns the final state and why
    the run stopped."""
    if algorithm is None:
        algorithm = fedavg()
    if not isinstance(algorithm, Algorithm):
        hint = " (call the factory: cohort.fedavg())" if callable(algorithm) else ""
        raise ConfigError(f"algorithm is a {type(algorithm).__name__}; expected a cohort.Algorithm{hint}")
    if not isinstance(settings, LoopSettings):
        raise ConfigError(f"settings is a {type(settings).__name__}; expected cohort.LoopSettings(rounds=...)")
    if not callable(client_fn):
        raise ConfigError(f"client_fn is a {type(client_fn).__name__}; expected a function client_id -> client")
    if not isinstance(arrays, Mapping):
        raise ConfigError(f"arrays is a {type(arrays).__name__}; expected a dict of named numpy arrays")
    size = settings.check(num_clients, reported)
    _check_client_fits(client_fn, algorithm)
    print(f"cohort: {num_clients} clients, {size} per round, {algorithm.name}, up to {settings.rounds} rounds")
    state = initial_state(algorithm, arrays, seed)
    channel = make_channel(client_fn, algorithm, backend, workers=workers, threads=threads)
    try:
        return run(state, algorithm=algorithm, channel=channel, num_clients=num_clients, settings=settings,
                   evaluate=evaluate, on_round=on_round)
    finally:
        channel.close()


def _check_client_fits(client_fn: ClientFn, algorithm: Algorithm) -> None:
    """Build client 0 once and refuse now, not after max_failed_rounds, a client that lacks what the
    algorithm's client half needs (a plain fit() client under FedProx, SCAFFOLD or FedSGD)."""
    missing = []
    if algorithm.client.requires:
        try:
            client = client_fn(0)
        except Exception:  # the rounds will report it as a failure of client 0, with its traceback
            return
        missing = [m for m in algorithm.client.requires if not callable(getattr(client, m, None))]
    if missing:
        raise ConfigError(f"{algorithm.name} needs clients with {', '.join(m + '()' for m in missing)} (a cohort.Trainer); "
                          f"client_fn returned a {type(client).__name__} without it: use cohort.TorchClient or implement "
                          "train(arrays, config, hooks) and gradient(arrays, config)")
