"""Hospital CSV files for site tests, made by the example's own generator (examples/hospitals/make_data.py)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make_hospitals(folder: Path, per_site: int, seed: int, count: int) -> list[Path]:
    """The first ``count`` of the example's ten hospital files, with ``per_site`` patients each."""
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLES / "hospitals" / "make_data.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    return make.main(folder, per_site=per_site, seed=seed)[:count]
