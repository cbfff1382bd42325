"""Reference models. Each builder takes the input shape (without the batch) and the output count.

MNIST models take (1, 28, 28) inputs in [0, 1]. Parameter counts, checked by the tests:
``mnist_2nn`` 199,210 and ``mnist_cnn`` 1,663,370 (McMahan et al. 2017); ``mlp`` 101,770 and
``cnn`` 1,199,882 (the seeds' Keras/PyTorch MNIST examples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from cohort.core.errors import ConfigError


def mnist_2nn(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """McMahan's 2NN: two hidden layers of 200 units with ReLU."""
    return mlp(input_shape, outputs, hidden=(200, 200))


def mlp(input_shape: tuple[int, ...], outputs: int, hidden: tuple[int, ...] = (128,)) -> nn.Module:
    """A multilayer perceptron on the flattened input; ``hidden=(128,)`` is the seeds' 784-128-10."""
    sizes = (math.prod(input_shape), *hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], outputs))
    return nn.Sequential(*layers)


def mnist_cnn(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """McMahan's CNN: 5×5 convolutions with 32 and 64 channels, each followed by 2×2 max-pooling,
    a 512-unit dense layer with ReLU, then the output layer (softmax is in the loss)."""
    channels, height, width = _image_shape(input_shape)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (height // 4) * (width // 4), 512), nn.ReLU(),
        nn.Linear(512, outputs),
    )


def cnn(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The seeds' CNN: 3×3 convolutions with 32 and 64 channels, 2×2 max-pooling, dropout 0.25,
    a 128-unit dense layer, dropout 0.5, then the output layer."""
    channels, height, width = _image_shape(input_shape)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, outputs),
    )


def linear_regression(input_shape: tuple[int, ...], outputs: int = 1) -> nn.Module:
    """``y = w·x + b`` on the flattened input; trained with the mean squared error."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), outputs))


def logistic_regression(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """Multinomial logistic regression: one linear layer whose logits go to the cross-entropy loss."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), outputs))


class CharLSTM(nn.Module):
    """McMahan et al.'s Shakespeare model: an 8-dimensional character embedding, two LSTM layers of 256
    units, and the next character's logits from the last step. Inputs are character ids (as floats, the
    way every cohort input arrives; they are exact integers)."""

    def __init__(self, seq_len: int, vocabulary: int, embedding: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x.long()))
        return self.out(h[:, -1])


def shakespeare_lstm(input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    if len(input_shape) != 1:
        raise ConfigError(f"shakespeare_lstm reads sequences of character ids; the data has examples of shape {tuple(input_shape)}")
    return CharLSTM(input_shape[0], outputs)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < 8:
        raise ConfigError(f"this model needs images of shape (channels, height, width) with sides >= 8; the data has examples of shape {tuple(input_shape)}")
    return input_shape[0], input_shape[1], input_shape[2]


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_2nn": mnist_2nn,
    "mnist_cnn": mnist_cnn,
    "mlp": mlp,
    "cnn": cnn,
    "linear_regression": linear_regression,
    "logistic_regression": logistic_regression,
    "shakespeare_lstm": shakespeare_lstm,
}


def model_factory(name: str, input_shape: tuple[int, ...], outputs: int) -> Callable[[], nn.Module]:
    """A picklable zero-argument builder of model ``name`` for this data (for process-pool workers)."""
    if name not in MODELS:
        raise ConfigError(f"model.name is {name!r}; expected one of {', '.join(MODELS)}")
    return partial(MODELS[name], tuple(input_shape), outputs)


def check_fits(model_fn: Callable[[], nn.Module], example: torch.Tensor, outputs: int, name: str) -> None:
    """One forward pass on one example, so a model that does not fit the data fails before training."""
    try:
        model = model_fn()
        with torch.no_grad():
            out = model.eval()(example.unsqueeze(0))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"model {name!r} does not fit examples of shape {tuple(example.shape)}: {e}") from e
    if tuple(out.shape) != (1, outputs):
        raise ConfigError(f"model {name!r} gives outputs of shape {tuple(out.shape)[1:]}; the data needs ({outputs},)")
