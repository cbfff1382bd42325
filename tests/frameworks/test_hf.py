"""Federated LoRA with transformers + PEFT: only the adapters travel (bytes per round equal the adapters'
size), the frozen base is bit-identical before and after, the metric improves, and a pretrained model
loads from a save_pretrained folder."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cohort.client.hf import HFClients, HFLoraClient, HFModel, LoraSettings, adapter_arrays, base_arrays, load_adapters
from cohort.core.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import lora_tiny  # noqa: E402


def test_a_lora_run_sends_only_adapters_keeps_the_base_and_learns():
    before = base_arrays(lora_tiny.base_model("seq_cls")())
    state, info = lora_tiny.main("seq_cls", rounds=8, clients=4, quiet=True)
    history = state.history
    # what travelled, each round: the adapters down to and up from every client, nothing else
    assert info["adapter_bytes"] < 0.06 * info["full_bytes"]
    for record in history:
        assert record["bytes_received"] == 4 * info["adapter_bytes"]
        assert record["bytes_sent"] >= 4 * info["adapter_bytes"]
    assert set(state.model) == set(adapter_arrays(info["client_fn"].model))
    assert not any(name in state.model for name in before)
    # the frozen base, in the model every client of this process trained with, did not change by a bit
    after = base_arrays(info["client_fn"].model)
    assert set(after) == set(before) and len(before) > 10
    for name, a in before.items():
        assert a.tobytes() == after[name].tobytes(), name
    assert history[-1]["federated_accuracy"] >= history[0]["federated_accuracy"] + 0.1, [h["federated_accuracy"] for h in history]


def test_a_causal_lm_lora_run_lowers_the_perplexity():
    state, _ = lora_tiny.main("causal_lm", rounds=3, clients=3, quiet=True)
    ppl = [h["federated_perplexity"] for h in state.history]
    assert ppl[-1] < ppl[0]


def test_the_worker_processes_give_the_same_adapters():
    a, _ = lora_tiny.main("seq_cls", rounds=2, clients=3, quiet=True)
    b, _ = lora_tiny.main("seq_cls", rounds=2, clients=3, quiet=True, backend="processes")
    for k in a.model:
        assert a.model[k].tobytes() == b.model[k].tobytes(), k


def test_a_pretrained_model_loads_from_a_save_pretrained_folder(tmp_path):
    spec = lora_tiny.base_model("causal_lm")
    spec.base().save_pretrained(tmp_path / "tiny")
    loaded = HFModel("causal_lm", pretrained=str(tmp_path / "tiny"), lora=spec.lora)
    ours, theirs = base_arrays(spec()), base_arrays(loaded())
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k].tobytes() == theirs[k].tobytes(), k
    state, _ = lora_tiny.main("causal_lm", rounds=1, clients=2, pretrained=str(tmp_path / "tiny"),
                              targets=("q_proj", "v_proj"), quiet=True)
    assert state.round == 1


def test_a_hub_name_without_the_network_says_what_it_needs():
    script = ("from cohort.client.hf import HFModel\n"
              "try:\n    HFModel('causal_lm', pretrained='no-such-org/no-such-model').base()\n"
              "except Exception as e:\n    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "ConfigError" in r.stdout and "needs the network, or a copy saved with save_pretrained" in r.stdout, r.stdout + r.stderr


def test_bad_lora_inputs_are_refused_clearly():
    with pytest.raises(ConfigError, match=r"target_modules \['q_proj'\] are not modules of this BertForSequenceClassification"):
        lora_tiny.base_model("seq_cls", targets=("q_proj",))()
    with pytest.raises(ConfigError, match="not both or neither"):
        HFModel("causal_lm")
    with pytest.raises(ConfigError, match="no model_type"):
        HFModel("causal_lm", config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="task is 'translation'"):
        HFModel("translation", config={"model_type": "llama"})
    with pytest.raises(ConfigError, match="lora r"):
        LoraSettings(r=0)
    model = lora_tiny.base_model("seq_cls")()
    with pytest.raises(DataError, match="expected \\(examples, tokens\\) integers"):
        HFLoraClient(model, np.zeros((4, 8), np.float32), np.zeros(4), task="seq_cls")
    with pytest.raises(DataError, match="one label per sequence"):
        HFLoraClient(model, np.ones((4, 8), np.int64), None, task="seq_cls")
    arrays = adapter_arrays(model)
    with pytest.raises(ConfigError, match="missing"):
        load_adapters(model, {k: v for k, v in list(arrays.items())[1:]})
    first = next(iter(arrays))
    with pytest.raises(ConfigError, match="has shape"):
        load_adapters(model, {**arrays, first: np.zeros((1, 1), np.float32)})
    clients = HFClients(lora_tiny.base_model("seq_cls"), [(np.ones((4, 8), np.int64), np.zeros(4, np.int64))], None)
    with pytest.raises(DataError, match="no held-out sequences"):
        clients(0).evaluate(arrays, {})
