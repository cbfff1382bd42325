"""Shared fixtures: the shared MNIST folder (found without the network) and the tests' fake clients."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# fakes.py holds clients that pickle by reference: worker processes (spawned with this sys.path) import it too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cohort.data import load_mnist  # noqa: E402

# The shared datasets sit beside the project: <project>/../shared/data, unless COHORT_DATA_DIR says otherwise.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("COHORT_DATA_DIR") or SHARED_DATA_DIR)


@pytest.fixture(scope="session")
def mnist(data_dir):
    return load_mnist(data_dir, download=False)


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures plot_runs saves, to look at what it drew."""
    import matplotlib.figure

    figures = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures
