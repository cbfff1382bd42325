"""The core imports no framework: cohort, a config, the loop, aggregation and channels run a NumPy
federation with torch absent from sys.modules."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SCRIPT = f"""
import sys
sys.path.insert(0, {str(EXAMPLES)!r})
import cohort
from cohort.config import load_config
import cohort.server.loop, cohort.aggregation, cohort.channel, cohort.server.checkpoint, cohort.frameworks
config = load_config(None, ["server.algorithm=scaffold", "server.policy=fedbuff"])
assert config.server.algorithm == "scaffold"
import numpy_client
state = numpy_client.main(rounds=20)
assert state.round == 20
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("no torch")
"""


def test_a_numpy_simulation_never_imports_torch():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("no torch")


def test_the_torch_names_load_on_first_use():
    r = subprocess.run([sys.executable, "-c", "import sys, cohort; assert 'torch' not in sys.modules; "
                        "cohort.TorchClient; assert 'torch' in sys.modules"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_import_cohort_imports_no_framework():
    """Frameworks load on first use: importing cohort and loading configs of every framework imports none."""
    script = ("import sys, cohort, cohort.frameworks\n"
              "from cohort.config import load_config\n"
              "for f in ('keras', 'sklearn', 'torch'):\n"
              "    load_config(None, [f'model.framework={f}'])\n"
              "loaded = [m for m in ('keras', 'sklearn', 'transformers', 'peft', 'torch', 'tensorflow') if m in sys.modules]\n"
              "assert not loaded, loaded\n"
              "print('none')")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "none"
