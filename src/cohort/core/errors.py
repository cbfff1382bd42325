"""The errors cohort raises. Every message names what was wrong, the value seen and what was expected."""


class CohortError(Exception):
    """Base of every error cohort raises on purpose."""


class ConfigError(CohortError):
    """A setting is unknown, out of range or inconsistent with another."""


class DataError(CohortError):
    """A dataset is missing, corrupt, or cannot be split as asked."""


class UpdateRejected(CohortError):
    """A client's update failed validation; it never touches the model."""


class RoundFailed(CohortError):
    """Too few clients succeeded, round after round, for the run to go on. ``state`` is the run's
    last state (the last good global model, every round's record), so nothing is lost."""

    def __init__(self, message: str, state: object = None) -> None:
        super().__init__(message)
        self.state = state


class TransportError(CohortError):
    """A message could not be carried to or from a client."""


class AuthError(CohortError):
    """A client could not prove who it is."""


class PrivacyBudgetExceeded(CohortError):
    """Going on would spend more privacy budget than allowed."""


def check(ok: bool, key: str, value: object, expected: str) -> None:
    """A setting's check: raise ConfigError naming ``key``, the ``value`` seen and what was ``expected``."""
    if not ok:
        raise ConfigError(f"{key} is {value!r}; expected {expected}")
