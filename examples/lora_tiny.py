"""Federated LoRA fine-tuning of a tiny transformer: only the adapters travel.

No weights can be downloaded here, so the base model is built from a config with a seeded random
initialisation (every client builds the same one) and frozen; each client trains LoRA adapters on its
own sentences and sends back only their delta. The task is generated: sentences of 16 words, where the
sentiment words outnumber the other polarity's, labelled positive or negative (``--task seq_cls``, a tiny
BERT), or counting sequences to continue (``--task causal_lm``, a tiny Llama).

    .venv/bin/python examples/lora_tiny.py                      # 8 clients, 15 rounds, sequence classification
    .venv/bin/python examples/lora_tiny.py --task causal_lm --rounds 5
    .venv/bin/python examples/lora_tiny.py --pretrained path/to/folder   # a real model saved with save_pretrained

With a pretrained checkpoint, pass its folder (or a hub name on a machine with the network) and the
names of the modules LoRA adapts (``--targets q_proj v_proj``); the task's data stays generated.
"""

from __future__ import annotations

import argparse

import numpy as np

import cohort
from cohort.client.hf import HFClients, HFModel, LoraSettings, adapter_arrays, nbytes_full

VOCAB, LENGTH = 64, 16
POSITIVE, NEGATIVE = range(4, 12), range(12, 20)  # word ids; 20..63 are neutral words, 0 is padding


def sentiment(n: int, gen: np.random.Generator, positive_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Sentences of neutral words with 3 to 6 sentiment words, most of one polarity: the label."""
    ids = gen.integers(20, VOCAB, size=(n, LENGTH))
    labels = (gen.random(n) < positive_share).astype(np.int64)
    for i, label in enumerate(labels):
        k = int(gen.integers(3, 7))
        major, minor = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        words = [gen.choice(major) for _ in range(k)] + [gen.choice(minor) for _ in range(int(gen.integers(0, (k + 1) // 2)))]
        ids[i, gen.choice(LENGTH, size=len(words), replace=False)] = words
    return ids, labels


def counting(n: int, gen: np.random.Generator, step: int) -> tuple[np.ndarray, None]:
    """Sequences that count up by ``step`` (mod the vocabulary) from a random start: a pattern to continue."""
    start = gen.integers(1, VOCAB, size=(n, 1))
    return (start + step * np.arange(LENGTH)) % (VOCAB - 1) + 1, None


def client_data(task: str, clients: int, seed: int, per_client: int = 96):
    """(train, test) per client; clients differ (label shares, or counting steps of 1 to 3)."""
    gen = np.random.default_rng(seed)
    out = []
    for c in range(clients):
        if task == "seq_cls":
            ids, labels = sentiment(per_client + 32, gen, positive_share=0.2 + 0.6 * c / max(1, clients - 1))
        else:
            ids, labels = counting(per_client + 32, gen, step=1 + c % 3)
        split = per_client
        out.append(((ids[:split], None if labels is None else labels[:split]),
                    (ids[split:], None if labels is None else labels[split:])))
    return [tr for tr, _ in out], [te for _, te in out]


def base_model(task: str, pretrained: str = "", targets: tuple[str, ...] = (), seed: int = 0) -> HFModel:
    if pretrained:
        return HFModel(task, pretrained=pretrained, lora=LoraSettings(r=4, alpha=8, target_modules=targets), seed=seed)
    if task == "seq_cls":
        config = {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": LENGTH}
        return HFModel(task, config=config, lora=LoraSettings(r=4, alpha=8, target_modules=targets or ("query", "value")), seed=seed)
    config = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": LENGTH}
    return HFModel(task, config=config, lora=LoraSettings(r=4, alpha=8, target_modules=targets or ("q_proj", "v_proj")), seed=seed)


def main(task: str = "seq_cls", rounds: int = 10, clients: int = 8, pretrained: str = "", targets: tuple[str, ...] = (),
         seed: int = 0, backend: str = "inprocess", quiet: bool = False):
    model_fn = base_model(task, pretrained, targets, seed)
    train, test = client_data(task, clients, seed)
    client_fn = HFClients(model_fn, train, test, settings=cohort.TrainSettings(optimizer="adam", lr=1e-2, batch_size=16,
                                                                               epochs=2), seed=seed)
    model = model_fn()
    start = adapter_arrays(model)
    adapters, full = sum(a.nbytes for a in start.values()), nbytes_full(model)
    if not quiet:
        print(f"{task}: {type(model.get_base_model()).__name__}, full model {full / 1e3:.1f} kB, adapters "
              f"{adapters / 1e3:.1f} kB ({adapters / full:.1%}); {clients} clients")

    def show(record, state):
        if not quiet:
            metric = "federated_accuracy" if task == "seq_cls" else "federated_perplexity"
            print(f"round {record['round']:2d}  {metric} {record.get(metric, float('nan')):.4f}  "
                  f"sent up {record['bytes_received'] / clients / 1e3:.1f} kB per client (the full model: {full / 1e3:.1f} kB)")

    state, stopped = cohort.simulate(client_fn, num_clients=clients, arrays=start, seed=seed, backend=backend,
                                     settings=cohort.LoopSettings(rounds=rounds, federated_fraction=1.0), on_round=[show])
    return state, {"adapter_bytes": adapters, "full_bytes": full, "client_fn": client_fn}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("seq_cls", "causal_lm"), default="seq_cls")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pretrained", default="", help="a folder saved with save_pretrained, or a hub name")
    parser.add_argument("--targets", nargs="*", default=[], help="module names LoRA adapts (with --pretrained)")
    args = parser.parse_args()
    main(args.task, args.rounds, args.clients, args.pretrained, tuple(args.targets))
