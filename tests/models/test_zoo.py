"""Reference models: the parameter counts of the papers, output shapes, and early shape errors."""

import pytest
import torch

from cohort.core.errors import ConfigError
from cohort.models import MODELS, check_fits, model_factory

MNIST = (1, 28, 28)


@pytest.mark.parametrize(
    "name, shape, outputs, params",
    [
        ("mnist_2nn", MNIST, 10, 199_210),  # McMahan et al. 2017
        ("mnist_cnn", MNIST, 10, 1_663_370),  # McMahan et al. 2017
        ("mlp", MNIST, 10, 101_770),  # 784-128-10
        ("cnn", MNIST, 10, 1_199_882),  # conv32, conv64, dropout, dense 128
        ("linear_regression", (10,), 1, 11),
        ("logistic_regression", (30,), 2, 62),
    ],
)
def test_parameter_counts_and_output_shape(name, shape, outputs, params):
    model = model_factory(name, shape, outputs)()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.eval()(torch.zeros(3, *shape)).shape == (3, outputs)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError, match="mnist_2nn"):
        model_factory("resnet", MNIST, 10)


@pytest.mark.parametrize("name", ["mnist_cnn", "cnn"])
def test_image_models_refuse_tabular_data_before_training(name):
    with pytest.raises(ConfigError, match=r"\(30,\)"):
        check_fits(model_factory(name, (30,), 2), torch.zeros(30), 2, name)


def test_check_fits_catches_a_wrong_output_count():
    fn = model_factory("mlp", MNIST, 10)
    check_fits(fn, torch.zeros(MNIST), 10, "mlp")
    with pytest.raises(ConfigError, match=r"\(10,\).*\(2,\)"):
        check_fits(fn, torch.zeros(MNIST), 2, "mlp")


def test_every_model_is_listed():
    assert set(MODELS) == {"mnist_2nn", "mnist_cnn", "mlp", "cnn", "linear_regression", "logistic_regression", "shakespeare_lstm"}
