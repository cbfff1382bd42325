"""The task registry: components answer their own tasks, protocols wrap any task by name, and the client
runtime holds no branch on a component's name."""

import numpy as np
import pytest

from cohort import fedavg
from cohort.channel import InProcessChannel
from cohort.core import tasks
from cohort.core.errors import ConfigError
from cohort.core.types import MODEL, ClientFailure, FailureStage, FitResult, EvaluateResult, Instruction, Message, Reply


class Plain:
    def fit(self, arrays, config):
        return FitResult({k: np.ones_like(a) for k, a in arrays.items()}, 3, {"seen": config.get("round", 0)})

    def evaluate(self, arrays, config):
        return EvaluateResult(0.5, 2)


@tasks.register_task("count_rows")
def count_rows(half, message, trainer, state, account, under=None):
    """A component of a test's own: a task no algorithm knows."""
    return Reply({"rows": {"n": np.array([7.0 if under is None else -1.0])}}, 1), state


@tasks.register_protocol("doubled")
def doubled(inner, half, message, trainer, state, account):
    """A protocol of a test's own: the inner task's reply, its model delta doubled."""
    reply, state = inner(message, state)
    return Reply({MODEL: {k: 2 * a for k, a in reply.arrays[MODEL].items()}}, reply.num_examples, reply.metrics), state


def run(task, config=None):
    channel = InProcessChannel(lambda cid: Plain(), fedavg().client)
    ((_, outcome),) = channel.run(Message(task, {MODEL: {"w": np.zeros(2)}}, config or {"round": 1}), [Instruction(0, {})])
    return outcome


def test_a_registered_task_and_protocol_run_through_a_channel():
    assert run("count_rows").arrays["rows"]["n"].tolist() == [7.0]
    plain, twice = run("fit"), run("doubled:fit")
    assert plain.arrays[MODEL]["w"].tolist() == [1.0, 1.0] and twice.arrays[MODEL]["w"].tolist() == [2.0, 2.0]
    assert twice.metrics == {"seen": 1} and twice.num_examples == 3  # the inner fit ran exactly as alone
    assert run("doubled:count_rows") is not None  # the inner task is told which protocol it runs under
    assert FailureStage.of_task("doubled:fit") == FailureStage.FIT


def test_the_providers_register_on_first_need():
    assert tasks.handler_for("secagg_advertise") is not None and tasks.handler_for("data_schema") is not None
    failed = run("nosuch:fit")
    assert isinstance(failed, ClientFailure) and "protocol 'nosuch'" in failed.reason and "secagg" in failed.reason
    failed = run("nosuch")
    assert isinstance(failed, ClientFailure) and "not one of this algorithm's" in failed.reason


def test_a_config_flag_makes_no_protocol():
    """A config record makes no protocol: a fit whose config carries the secagg record is a plain fit, and a
    site's statistics asked in the clear stay in the clear (under is None), whatever the message's config says."""
    outcome = run("fit", {"round": 1, "secagg": {"id": 0, "clip_range": 1.0, "bits": 16}})
    assert isinstance(outcome, Reply) and set(outcome.arrays) == {MODEL}
    assert run("count_rows", {"secagg": {"id": 0}}).arrays["rows"]["n"].tolist() == [7.0]


def test_names_are_checked_when_registered():
    with pytest.raises(ValueError, match="without ':'"):
        tasks.register_task("a:b")(count_rows)
    with pytest.raises(ValueError, match="registered twice"):
        tasks.register_task("count_rows")(doubled)


def test_the_runtime_and_the_algorithms_name_no_component():
    from pathlib import Path

    import cohort

    src = Path(cohort.__file__).parent
    for path in ("channel/runtime.py", "algorithms/base.py"):
        text = (src / path).read_text()
        assert '"secagg' not in text and '"data_' not in text and "import handle" not in text, path  # no task names
