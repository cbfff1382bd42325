"""Estimator factories for test_sklearn.py: one that works, and ones a user could wrongly give."""

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import SGDClassifier, SGDRegressor


def hinge_sgd():
    return SGDClassifier(loss="hinge", alpha=1e-4, learning_rate="constant", eta0=0.005)


def random_forest():
    return RandomForestClassifier()


def regressor():
    return SGDRegressor()


def tuned(alpha=1e-4, eta0=0.005):
    """Parameters with defaults are the factory's own: cohort calls it with none."""
    return SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="constant", eta0=eta0)
