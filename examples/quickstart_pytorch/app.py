"""The quickstart as one cohort app: the same module runs in simulation and in deployment.

    cohort run --app app:app                                    # simulation, in this process
    cohort run --app app:app --set simulation.backend=processes
    cohort server --app app:app --min-clients 3                  # deployment: a server ...
    cohort client --app app:app --server 127.0.0.1:8080 --id 0   # ... and one process per client

Run these from this folder (or put it on PYTHONPATH). ``--set app.learning-rate=0.05`` changes a
setting of the app's own: the server's fit_config and every client see it.
"""

import torch

import cohort
from task import Net, load_data, load_test, test, train


class FlowerClient(cohort.Client):
    """What Flower's quickstart client does, in cohort's terms: fit returns the change it made (a delta)."""

    def __init__(self, context: cohort.Context):
        s = context.settings
        self.trainloader, _ = load_data(context.client_id, s["num-partitions"], s["batch-size"], s["examples"])
        self.context = context

    def fit(self, arrays, config):
        net = Net()
        net.load_state_dict(cohort.to_torch(arrays))
        lr, epochs = self.context.config["lr"], self.context.config["local-epochs"]
        torch.manual_seed(config["seed"] * 100003 + config["round"] * 101 + self.context.client_id)
        loss = train(net, self.trainloader, epochs, lr)
        trained = cohort.from_torch(net.state_dict())
        state = self.context.state  # kept across rounds: in the state store in simulation, in the process deployed
        state["rounds-trained"] = state.get("rounds-trained", 0) + 1
        delta = {k: trained[k] - arrays[k] for k in arrays}
        return cohort.FitResult(delta, len(self.trainloader.dataset),
                                {"loss": loss, "rounds_trained": state["rounds-trained"]})

    def evaluate(self, arrays, config):
        net = Net()
        net.load_state_dict(cohort.to_torch(arrays))
        loss, accuracy = test(net, load_test(examples=self.context.settings["test-examples"]))
        return cohort.EvaluateResult(loss, self.context.settings["test-examples"] or 10_000, {"accuracy": accuracy})


def initial_arrays(settings):
    torch.manual_seed(settings["model-seed"])
    return cohort.from_torch(Net().state_dict())


def evaluate(arrays, context):
    """The server's evaluation: the task's own test(), with its own normalisation."""
    net = Net()
    net.load_state_dict(cohort.to_torch(arrays))
    loss, accuracy = test(net, load_test(examples=context.settings["test-examples"]))
    return {"loss": loss, "accuracy": accuracy}


def fit_config(context):
    """Flower's on_fit_config: this round's record for every client of it."""
    return {"lr": context.settings["learning-rate"], "local-epochs": context.settings["local-epochs"]}


app = cohort.App(
    client=FlowerClient,
    arrays=initial_arrays,
    evaluate=evaluate,
    fit_config=fit_config,
    config={
        "name": "quickstart-pytorch",
        "rounds": 3,
        "data": {"num_clients": 10},
        "server": {"fraction": 0.5},
        "evaluate": {"initial": True},
        "app": {"learning-rate": 0.01, "local-epochs": 1, "batch-size": 32, "num-partitions": 10,
                "examples": 0, "test-examples": 0, "model-seed": 0},
    },
)
