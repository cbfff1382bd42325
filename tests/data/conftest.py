"""Fixtures for the data tests: the shared MNIST folder, found without the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cohort.data import load_mnist

# The shared datasets sit beside the project: <project>/../shared/data, unless COHORT_DATA_DIR says otherwise.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("COHORT_DATA_DIR") or SHARED_DATA_DIR)


@pytest.fixture(scope="session")
def mnist(data_dir):
    return load_mnist(data_dir, download=False)
