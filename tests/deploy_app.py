"""Client apps for the deployment tests (`cohort client --app deploy_app:slow`)."""

import time

_demo = None


def slow(cid: int):
    """The demo's clients (3 of them), taking half a second to train, so a round can be cut mid-way."""
    global _demo
    if _demo is None:
        from cohort.config import load_config
        from cohort.experiment import build

        _demo = build(load_config(None, ["data.num_clients=3"])).client_fn()
    client = _demo(cid)
    train = client.train

    def slow_train(arrays, config, hooks):
        time.sleep(0.5)
        return train(arrays, config, hooks)

    client.train = slow_train
    return client


def big(cid: int):
    """A client whose update is 64 MB (16 Mi float32 values)."""
    import numpy as np

    from cohort import EvaluateResult, FitResult

    class Big:
        def fit(self, arrays, config):
            return FitResult({"w": np.full(arrays["w"].shape, 0.5, np.float32)}, 1)

        def evaluate(self, arrays, config):
            return EvaluateResult(0.0, 1)

    return Big()
