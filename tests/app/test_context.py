"""A client's context state: what it may hold, and that it comes back exactly (0-d arrays stay 0-d
through the state store's spill files and the checkpoint)."""

import numpy as np
import pytest

from cohort.client.context import APP, ClientApp, check_record
from cohort.client.store import ClientStateStore
from cohort.core.errors import ConfigError
from cohort.core.tree import decode, encode
from cohort.core.types import Message


def test_state_round_trips_through_the_store_and_the_checkpoint_tree():
    seen = {}

    def client_fn(context):
        seen["state"] = dict(context.state)
        context.state.update(count=seen["state"].get("count", 0) + 1, rate=0.5, flag=True,
                             table=np.arange(6, dtype=np.float32).reshape(2, 3), zero_d=np.float32(2.5))
        return None

    app = ClientApp(client_fn)
    message = Message("fit", {}, {"round": 1, APP: {"settings": {"a": 1}, "config": {"lr": 0.1}}})
    _, context, own = app.open(3, message, None)
    assert own is None and context.settings == {"a": 1} and context.config == {"lr": 0.1} and context.round == 1
    state = app.keep(context, {"control": {"c": np.ones(2)}})
    store = ClientStateStore(0)  # every entry spills to a file at once
    store.put(3, state)
    arrays = {}
    back = decode(encode(store.get(3), arrays), arrays)
    _, context, own = app.open(3, message, back)
    assert set(own) == {"control"}  # the algorithm's half never sees the app's group
    kept = seen["state"]
    assert kept["count"] == 1 and type(kept["count"]) is int and kept["rate"] == 0.5 and kept["flag"] is True
    assert kept["table"].shape == (2, 3) and kept["table"].dtype == np.float32
    assert kept["zero_d"].shape == () and kept["zero_d"].dtype == np.float32 and kept["zero_d"] == 2.5


@pytest.mark.parametrize("value", ["text", [1, 2], {"a": 1}, np.array(["x"])])
def test_state_refuses_what_it_cannot_keep(value):
    app = ClientApp(lambda context: context.state.update(bad=value))
    _, context, _ = app.open(0, Message("fit", {}, {}), None)
    app.client_fn(context)
    with pytest.raises(ConfigError, match=r"context.state\['bad'\]"):
        app.keep(context, None)


def test_config_records_hold_plain_values():
    assert check_record({"lr": np.float32(0.5), "name": "x", "on": True}, "fit_config") == {"lr": 0.5, "name": "x", "on": True}
    with pytest.raises(ConfigError, match="fit_config returned 'w'"):
        check_record({"w": np.ones(2)}, "fit_config")
    with pytest.raises(ConfigError, match="expected a dict"):
        check_record([1], "fit_config")
