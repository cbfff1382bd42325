"""``simulate``: a federation on this machine in one call, for scripts and notebooks."""

from __future__ import annotations

from collections.abc import Sequence

from cohort.algorithms.base import Algorithm
from cohort.algorithms.fedavg import fedavg
from cohort.channel.inprocess import InProcessChannel, ProcessPoolChannel
from cohort.client.base import ClientFn
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError
from cohort.server.loop import Evaluate, LoopSettings, OnRound, run_rounds
from cohort.server.state import ServerState


def simulate(
    client_fn: ClientFn,
    num_clients: int,
    arrays: NamedArrays,
    settings: LoopSettings,
    *,
    algorithm: Algorithm | None = None,
    evaluate: Evaluate | None = None,
    on_round: Sequence[OnRound] = (),
    backend: str = "inprocess",
    workers: int = 0,
    threads: int = 1,
    seed: int = 0,
) -> tuple[ServerState, str]:
    """Run ``settings.rounds`` rounds of ``algorithm`` (default FedAvg) from ``arrays`` over clients
    ``0..num_clients-1`` built by ``client_fn``; ``backend`` is "inprocess" or "processes" (then
    ``client_fn`` must pickle). Returns the final state and why the run stopped."""
    algorithm = algorithm or fedavg()
    if backend == "processes":
        channel = ProcessPoolChannel(client_fn, workers=workers, threads=threads)
    elif backend == "inprocess":
        channel = InProcessChannel(client_fn, threads=threads)
    else:
        raise ConfigError(f"backend is {backend!r}; expected 'inprocess' or 'processes'")
    state = ServerState(0, arrays, algorithm.aggregator.init(arrays), seed)
    try:
        return run_rounds(state, algorithm=algorithm, channel=channel, num_clients=num_clients,
                          settings=settings, evaluate=evaluate, on_round=on_round)
    finally:
        channel.close()
