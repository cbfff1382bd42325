"""Small numpy apps for the app tests (`cohort run --app counting_app:app`): fast, and each one shows
one thing (what a client is told, what it keeps, what the server evaluates)."""

import time

import numpy as np

import cohort


def _target(cid: int) -> np.ndarray:
    return np.random.default_rng(cid).normal(size=8).astype(np.float32)


class Counter(cohort.Client):
    """Moves the model towards its own target by the round's learning rate; counts its rounds in its state."""

    def __init__(self, context):
        self.context = context

    def fit(self, arrays, config):
        time.sleep(self.context.settings.get("sleep", 0))  # slow enough to be killed mid-round (resume test)
        lr = self.context.config["lr"]
        state = self.context.state
        state["rounds"] = state.get("rounds", 0) + 1
        state["seen"] = np.append(state.get("seen", np.zeros(0, np.int64)), config["round"])
        delta = {"w": (lr * (_target(self.context.client_id) - arrays["w"])).astype(np.float32)}
        return cohort.FitResult(delta, 10 + self.context.client_id, {
            "lr": lr, "scale": self.context.settings["scale"], "rounds": state["rounds"],
            "seen_sum": float(state["seen"].sum()), "name_ok": float(self.context.name.startswith("client-"))})

    def evaluate(self, arrays, config):
        d = float(np.linalg.norm(arrays["w"] - _target(self.context.client_id)))
        return cohort.EvaluateResult(d, 5, {"distance": d})


class WeightsSender(Counter):
    """The habit of other frameworks: fit returns the trained weights, not the change."""

    def fit(self, arrays, config):
        result = super().fit(arrays, config)
        return cohort.FitResult({"w": arrays["w"] + result.delta["w"]}, result.num_examples, {})


def evaluate(arrays, context):
    import torch

    return {"distance": float(np.linalg.norm(arrays["w"])) * context.settings["scale"], "round_seen": context.round,
            "threads": torch.get_num_threads()}


def fit_config(context):
    return {"lr": context.settings["lr"] * (0.5 if context.round > 2 else 1.0)}


def mean_of_lr(pairs):
    return {"lr_min": min(m["lr"] for _, m in pairs), "clients": len(pairs)}


CONFIG = {"name": "counting", "rounds": 4, "data": {"num_clients": 6}, "server": {"fraction": 0.5},
          "app": {"lr": 0.5, "scale": 2.0}}

app = cohort.App(client=Counter, arrays={"w": np.ones(8, np.float32)}, evaluate=evaluate, fit_config=fit_config,
                 aggregate_fit_metrics=None, config=CONFIG)
aggregated = cohort.App(client=Counter, arrays={"w": np.ones(8, np.float32)}, fit_config=fit_config,
                        aggregate_fit_metrics=mean_of_lr, config=CONFIG)
coordinator = cohort.App(client=Counter, arrays={"w": np.ones(8, np.float32)}, fit_config=fit_config, config=CONFIG)
weights = cohort.App(client=WeightsSender, arrays={"w": np.ones(8, np.float32)}, fit_config=fit_config, config=CONFIG)
