"""The client runtime: one task of one client, in any backend.

Builds the client, hands it and its state to the algorithm's client half, and checks what comes
back. Anything user code raises or returns wrongly becomes a :class:`ClientFailure` value.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import replace

from cohort.algorithms.base import ClientHalf, ClientState
from cohort.client.base import ClientFn, as_trainer
from cohort.client.accounting import account
from cohort.client.context import ClientApp
from cohort.core.records import COMPRESSION
from cohort.core.tasks import run_task
from cohort.core.types import MODEL, ClientFailure, EvaluateResult, FailureStage, Message, Reply

Outcome = Reply | EvaluateResult | ClientFailure


def run_client(client_fn: ClientFn, client_half: ClientHalf, client_id: int, message: Message,
               state: ClientState) -> tuple[Outcome, ClientState]:
    """Run ``message.task`` for client ``client_id``; return its outcome and its next state (the
    state is unchanged when the client fails)."""
    stage = FailureStage.of_task(message.task)
    started = time.perf_counter()
    app = client_fn if isinstance(client_fn, ClientApp) else None  # a client built from its context
    try:
        if app is not None:
            client, context, own = app.open(client_id, message, state)
        else:
            client, own = client_fn(client_id), state
        result, new_state = run_task(client_half, message, as_trainer(client), own, account)
        if app is not None:
            new_state = app.keep(context, new_state)
    except (Exception, SystemExit) as e:  # user code: its exceptions, even sys.exit, fail this client only
        return ClientFailure(client_id, stage, describe(e)), state
    expected = EvaluateResult if message.task == "evaluate" else Reply
    if not isinstance(result, expected):
        return ClientFailure(client_id, stage, f"{message.task} returned a {type(result).__name__}; "
                                               f"expected {expected.__name__}"), state
    if new_state is not None and not _is_groups(new_state):
        return ClientFailure(client_id, stage, f"the client state is a {type(new_state).__name__}; "
                                               "expected {group: {name: array}} or None"), state
    if isinstance(result, Reply):
        if message.task == "fit":
            warn_if_weights(result, message, client_id)
        try:
            result, new_state = _after_reply(result, new_state, message, client_id)
        except Exception as e:  # a bad setting of the client's privacy or compression fails this client only
            return ClientFailure(client_id, stage, describe(e)), state
    seconds = time.perf_counter() - started
    if isinstance(result, Reply):  # the version it was computed from, whatever it claims
        result = replace(result, version=message.version, seconds=seconds)
    else:
        result = replace(result, seconds=seconds)
    return result, new_state


def _after_reply(reply: Reply, state: ClientState, message: Message, client_id: int) -> tuple[Reply, ClientState]:
    """What happens to every reply on its way out, in order: client-side DP accounting (the client's
    ledger and ε, from facts its trainer reported), then compression as the server's config asks."""
    reply, state = account(reply, state)
    if reply.facts:  # facts no accountant of this client read: they stay here too
        reply = replace(reply, facts={})
    compression = message.config.get(COMPRESSION) if isinstance(message.config, Mapping) else None  # its record
    if isinstance(compression, Mapping) and isinstance(reply.arrays, Mapping) and MODEL in reply.arrays:
        reply, state = _compressed(reply, state, compression, message, client_id)
    return reply, state


def _compressed(reply: Reply, state: ClientState, settings: Mapping, message: Message, client_id: int):
    """The model delta compressed as the server asked (its config's ``compression``); top-k's residual
    stays in this client's state (error feedback)."""
    from cohort.client.compression import RESIDUAL, compress
    from cohort.core.seeding import Stage, rng

    kind, fraction = settings.get("kind", "none"), float(settings.get("topk_fraction", 1.0))
    own = dict(state or {})
    g = rng(int(message.config.get("seed", 0)), int(message.config.get("round", 0)), Stage.COMPRESS, client_id)
    sent, residual = compress(reply.arrays[MODEL], kind, fraction, g, own.get(RESIDUAL))
    if residual is not None:
        own[RESIDUAL] = residual
    return replace(reply, arrays={**reply.arrays, MODEL: sent}), (own or None)


_WARNED: set[str] = set()  # the habits already pointed out in this process (each once)
_LOOKED = [0]  # fit replies looked at for weights-as-delta in this process
_NORMS: dict[tuple[int, int], float] = {}  # (run seed, round) -> the norm of the model sent, first rounds seen
_LOOKS: dict[tuple[int, int], int] = {}  # (run seed, round) -> replies looked at in it
LOOK_ROUNDS, LOOK_PER_ROUND = 6, 2


def warn_if_weights(reply: Reply, message: Message, client_id: int) -> None:
    """Warn once if a client sent its trained weights where a delta belongs (the habit of frameworks whose
    clients return weights). One reply cannot tell: a real delta early in training can point where the
    model does and be as large (linear regression far from its optimum). The habit shows over rounds:
    FedAvg adds the weights to the model, which then nearly doubles every round. So it warns when a reply
    is close to the model it was sent (within half its norm) and that model grew 1.5-fold or more in each
    of the two rounds before, as seen from this process (two replies of each of its first rounds)."""
    if "weights" in _WARNED:
        return
    config = message.config if isinstance(message.config, Mapping) else {}
    rnd, seed = config.get("round"), config.get("seed", 0)
    if not isinstance(rnd, int) or not isinstance(seed, int):
        return
    key = (seed, rnd)
    if key not in _NORMS and len(_NORMS) >= LOOK_ROUNDS or _LOOKS.get(key, 0) >= LOOK_PER_ROUND:
        return
    sent, got = message.arrays.get(MODEL) if isinstance(message.arrays, Mapping) else None, None
    if isinstance(reply.arrays, Mapping):
        got = reply.arrays.get(MODEL)
    if not isinstance(sent, Mapping) or not isinstance(got, Mapping) or set(sent) != set(got):
        return
    import numpy as np

    try:
        if key not in _NORMS:
            _NORMS[key] = math.sqrt(sum(float(np.vdot(a, a)) for a in sent.values()))
        norm = _NORMS[key]
        apart = math.sqrt(sum(float(np.sum((np.asarray(got[k], np.float64) - a) ** 2)) for k, a in sent.items()))
    except (TypeError, ValueError):  # shapes or types the validation will refuse with its own message
        return
    _LOOKS[key] = _LOOKS.get(key, 0) + 1
    _LOOKED[0] += 1
    before = [_NORMS[(seed, r)] for r in (rnd - 2, rnd - 1) if (seed, r) in _NORMS]
    grew = len(before) == 2 and before[0] > 0 and before[1] >= 1.5 * before[0] and norm >= 1.5 * before[1]
    if norm > 0 and math.isfinite(apart) and apart < 0.5 * norm and grew:
        _WARNED.add("weights")
        warnings.warn(f"client {client_id}'s update is close to the model it was sent (|update - model| = "
                      f"{apart:.3g}, |model| = {norm:.3g}), and the model has grown 1.5-fold or more each round "
                      f"({before[0]:.3g}, {before[1]:.3g}, {norm:.3g}): it looks like trained weights, not a delta. "
                      "cohort's clients return the change they made, trained minus received (FitResult(delta=...)); "
                      "FedAvg adds it to the model, so weights sent as a delta make the model grow every round. "
                      "Return {k: trained[k] - arrays[k] for k in arrays}", UserWarning, stacklevel=2)


def _is_groups(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(g, str) and isinstance(a, Mapping) for g, a in value.items())


def describe(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(e).__name__}: {e} (at {where})" if where else f"{type(e).__name__}: {e}"
