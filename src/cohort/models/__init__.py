"""Reference models."""

from cohort.models.zoo import MODELS, check_fits, cnn, linear_regression, logistic_regression, mlp, mnist_2nn, mnist_cnn, model_factory

__all__ = ["MODELS", "check_fits", "cnn", "linear_regression", "logistic_regression", "mlp", "mnist_2nn", "mnist_cnn", "model_factory"]
