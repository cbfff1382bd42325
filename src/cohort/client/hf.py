"""Hugging Face transformers fine-tuned with PEFT's LoRA: only the adapters travel.

The base model is frozen and the same on every client: loaded from a pretrained checkpoint (a folder
written by ``save_pretrained``, or a hub name when the machine is online), or built from a config with
a seeded random initialisation. :class:`HFModel` builds it and wraps it in LoRA adapters
(:class:`LoraSettings`); the federated model is the adapter set alone (PEFT's adapter state dict: the
LoRA matrices, and for sequence classification the new classifier head), so the server's ``model``
group, every broadcast and every update hold the adapters and nothing of the base.

:class:`HFLoraClient` is a :class:`cohort.Trainer`: it loads the received adapters, trains them with a
fresh AdamW (``[client] optimizer = "adam"``) or SGD for ``epochs`` over its token ids in a seeded order,
and returns their delta. Tasks: ``"causal_lm"`` (labels are the inputs, shifted by the model) and
``"seq_cls"`` (a label per sequence; evaluation adds accuracy). Install with ``pip install 'cohort[hf]'``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

try:
    import peft
    import transformers
except ImportError as e:
    raise ImportError(f"{e}: pip install 'cohort[hf]' (transformers and peft)", name=getattr(e, "name", "transformers")) from e

from cohort.client.base import FrameworkClient, Hooks, Trained
from cohort.client.settings import TrainSettings
from cohort.client.torch import seed_torch
from cohort.core.arrays import NamedArrays
from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng, torch_seed
from cohort.core.types import Config, EvaluateResult

TASKS = {"causal_lm": ("AutoModelForCausalLM", "CAUSAL_LM"), "seq_cls": ("AutoModelForSequenceClassification", "SEQ_CLS")}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's rank ``r``, scale ``alpha`` (the update is scaled by alpha / r), dropout, and the modules
    it adapts (names as the model calls them: ``q_proj``/``v_proj`` in Llama, ``query``/``value`` in BERT)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and 1 <= self.r <= 4096):
            raise ConfigError(f"lora r is {self.r!r}; expected an integer rank from 1 to 4096")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < math.inf):
            raise ConfigError(f"lora alpha is {self.alpha!r}; expected a finite number > 0")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ConfigError(f"lora dropout is {self.dropout!r}; expected 0 <= dropout < 1")
        if not (self.target_modules and all(isinstance(m, str) and m for m in self.target_modules)):
            raise ConfigError(f"lora target_modules is {self.target_modules!r}; expected module names, e.g. ('q_proj', 'v_proj')")


@dataclass(frozen=True)
class HFModel:
    """The picklable ``model_fn``: a frozen base model wrapped in LoRA adapters.

    ``pretrained``: a folder saved with ``save_pretrained`` (or a hub name, which needs the network);
    else ``config``: the keyword arguments of a transformers config (``model_type`` first, e.g.
    ``{"model_type": "llama", "hidden_size": 32, ...}``), built with weights drawn from ``seed``, so
    every client builds the same base."""

    task: str = "causal_lm"
    pretrained: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    num_labels: int = 2
    lora: LoraSettings = LoraSettings()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task is {self.task!r}; expected one of {', '.join(TASKS)}")
        if bool(self.pretrained) == bool(self.config):
            raise ConfigError("give a base model either by pretrained (a save_pretrained folder or a hub name) or by "
                              "config (a transformers config's keyword arguments, with model_type), not both or neither")
        if self.config and "model_type" not in self.config:
            raise ConfigError(f"config {sorted(self.config)} has no model_type; add e.g. model_type = 'llama'")

    def base(self) -> "transformers.PreTrainedModel":
        auto = getattr(transformers, TASKS[self.task][0])
        extra = {"num_labels": self.num_labels} if self.task == "seq_cls" else {}
        if self.pretrained:
            local = os.path.isdir(self.pretrained)
            try:  # float32 whatever the checkpoint's dtype: the adapters travel as float32 arrays
                return auto.from_pretrained(self.pretrained, local_files_only=local, **extra).float()
            except (OSError, ValueError) as e:
                where = (f"the folder {self.pretrained!r}" if local else
                         f"{self.pretrained!r} (not a folder here, so a hub name: it needs the network, or a copy "
                         f"saved with save_pretrained)")
                raise ConfigError(f"cannot load a pretrained {self.task} model from {where}: {e}") from e
        settings = dict(self.config)
        try:
            config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings, **extra)
        except (KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"config {self.config!r} is not a transformers config: {e}") from e
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(self.seed, 0, Stage.INIT))
            return auto.from_config(config)

    def __call__(self) -> "peft.PeftModel":
        base = self.base()
        names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
        missing = [m for m in self.lora.target_modules if m not in names]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ConfigError(f"lora target_modules {missing} are not modules of this {type(base).__name__}; "
                              f"its linear modules are {linear}")
        lora = peft.LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                               target_modules=list(self.lora.target_modules), task_type=getattr(peft.TaskType, TASKS[self.task][1]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(self.seed, 0, Stage.INIT, 1))
            return peft.get_peft_model(base, lora)


def adapter_arrays(model: "peft.PeftModel") -> NamedArrays:
    """The adapters (what travels) as named arrays."""
    return {k: v.detach().cpu().numpy().copy() for k, v in peft.get_peft_model_state_dict(model).items()}


def base_arrays(model: "peft.PeftModel") -> NamedArrays:
    """The frozen base weights (what never travels), by parameter name."""
    return {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters() if not p.requires_grad}


def load_adapters(model: "peft.PeftModel", arrays: NamedArrays) -> None:
    expected = peft.get_peft_model_state_dict(model)
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ConfigError(f"the arrays do not fit the model's adapters: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in expected.items():
        if tuple(arrays[k].shape) != tuple(v.shape):
            raise ConfigError(f"adapter {k!r} has shape {tuple(arrays[k].shape)}; the model's has {tuple(v.shape)}")
    peft.set_peft_model_state_dict(model, {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in arrays.items()})


def nbytes_full(model: "peft.PeftModel") -> int:
    """Bytes of every parameter, base and adapters: what sending the whole model would cost."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


class HFLoraClient(FrameworkClient):
    """A client fine-tuning the adapters on its own token ids (a :class:`cohort.Trainer`)."""

    def __init__(self, model: "peft.PeftModel", input_ids: np.ndarray, labels: np.ndarray | None = None, *,
                 test: tuple[np.ndarray, np.ndarray | None] | None = None, task: str = "causal_lm",
                 settings: TrainSettings = TrainSettings(optimizer="adam", lr=1e-3, batch_size=8),
                 client_id: int = 0, seed: int = 0) -> None:
        if task not in TASKS:
            raise ConfigError(f"task is {task!r}; expected one of {', '.join(TASKS)}")
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or len(ids) == 0:
            raise DataError(f"client {client_id}: input_ids has shape {ids.shape} and dtype {ids.dtype}; expected "
                            "(examples, tokens) integers, at least one example")
        if task == "seq_cls" and (labels is None or len(labels) != len(ids)):
            raise DataError(f"client {client_id}: a seq_cls client needs one label per sequence; got "
                            f"{None if labels is None else len(labels)} for {len(ids)} sequences")
        self.model, self.ids, self.labels, self.test, self.task = model, ids, labels, test, task
        self.settings, self.client_id, self.seed = settings, client_id, seed

    def _batch_loss(self, ids: torch.Tensor, labels: torch.Tensor | None):
        out = self.model(input_ids=ids, labels=ids if self.task == "causal_lm" else labels)
        return out.loss, out.logits

    def train(self, arrays: NamedArrays, config: Config, hooks: Hooks = Hooks()) -> Trained:
        if not hooks.plain:
            raise ConfigError("the LoRA client trains its adapters with plain steps; use fedavg (or a server optimizer)")
        s = self.settings.override(config)
        load_adapters(self.model, arrays)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = (torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay) if s.optimizer == "adam"
                     else torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay))
        seed, round_ = int(config.get("seed", self.seed)), int(config.get("round", 0))
        order = rng(seed, round_, Stage.SHUFFLE, self.client_id)
        n, b = len(self.ids), len(self.ids) if s.batch_size == 0 else min(s.batch_size, len(self.ids))
        ids = torch.from_numpy(self.ids.astype(np.int64))
        labels = torch.from_numpy(np.asarray(self.labels, np.int64)) if self.labels is not None else None
        total, steps = 0.0, 0
        self.model.train()
        with torch.random.fork_rng(devices=[]):
            seed_torch(torch_seed(seed, round_, Stage.TORCH, self.client_id))  # LoRA dropout
            for _ in range(s.epochs):
                perm = torch.from_numpy(order.permutation(n))
                for start in range(0, n, b):
                    idx = perm[start:start + b]
                    optimizer.zero_grad(set_to_none=True)
                    loss, _ = self._batch_loss(ids[idx], labels[idx] if labels is not None else None)
                    loss.backward()
                    optimizer.step()
                    total, steps = total + loss.item() * len(idx), steps + 1
        new = adapter_arrays(self.model)
        delta = {k: new[k] - np.asarray(arrays[k], np.float32) for k in new}
        return Trained(delta, n, steps, s.lr, {"train_loss": total / (n * s.epochs)})

    def gradient(self, arrays: NamedArrays, config: Config) -> Trained:
        raise ConfigError("the LoRA client computes no full-batch gradient (FedSGD); use fedavg")

    @torch.no_grad()
    def evaluate(self, arrays: NamedArrays, config: Config) -> EvaluateResult:
        self.require_test("held-out sequences")
        load_adapters(self.model, arrays)
        self.model.eval()
        ids = torch.from_numpy(np.asarray(self.test[0], np.int64))
        labels = torch.from_numpy(np.asarray(self.test[1], np.int64)) if self.test[1] is not None else None
        total, correct, b = 0.0, 0, max(1, self.settings.batch_size or 32)
        for start in range(0, len(ids), b):  # in batches: a whole set's logits (examples x tokens x vocabulary) may not fit
            part = labels[start:start + b] if labels is not None else None
            loss, logits = self._batch_loss(ids[start:start + b], part)
            total += float(loss) * len(ids[start:start + b])
            if part is not None:
                correct += int((logits.argmax(-1) == part).sum())
        loss = total / len(ids)
        metrics = {"perplexity": math.exp(min(loss, 50.0))} if self.task == "causal_lm" else {"accuracy": correct / len(ids)}
        return EvaluateResult(loss, len(ids), metrics)


class HFClients:
    """A ``client_fn`` over per-client token arrays: one model per process (built on first use, left out
    of pickles), client ``i`` trains on ``train[i]`` = (input_ids, labels or None)."""

    def __init__(self, model_fn: HFModel, train: Sequence[tuple[np.ndarray, np.ndarray | None]],
                 test: Sequence[tuple[np.ndarray, np.ndarray | None]] | None = None, *,
                 settings: TrainSettings = TrainSettings(optimizer="adam", lr=1e-3, batch_size=8), seed: int = 0) -> None:
        self.model_fn, self.train, self.test, self.settings, self.seed = model_fn, list(train), test, settings, seed
        self._model = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> "peft.PeftModel":
        if self._model is None:
            self._model = self.model_fn()
        return self._model

    def __len__(self) -> int:
        return len(self.train)

    def __call__(self, client_id: int) -> HFLoraClient:
        ids, labels = self.train[client_id]
        test = self.test[client_id] if self.test is not None else None
        return HFLoraClient(self.model, ids, labels, test=test, task=self.model_fn.task, settings=self.settings,
                            client_id=client_id, seed=self.seed)
