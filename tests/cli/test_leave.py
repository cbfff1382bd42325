"""After an interrupt the command leaves even when a thread it started never ends (an executor's manager
thread that the interrupt caught mid-way): Python's own exit would join it for ever."""

import subprocess
import sys

CODE = """
import threading, time
from cohort.cli import _leave
threading.Thread(target=time.sleep, args=(3600,)).start()   # non-daemon: Python's exit would wait an hour
print("left", flush=True)
raise SystemExit(_leave(130, grace_s=0.5))
"""


def test_a_thread_that_never_ends_does_not_hold_the_exit():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stdout.strip() == "left", r.stderr


def test_without_such_a_thread_the_code_is_returned():
    code = "from cohort.cli import _leave\nraise SystemExit(_leave(143, grace_s=0.1) + 1)"  # +1: returned, not exited
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 144, r.stderr
