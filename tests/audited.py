"""`python audited.py ARGS...` is `cohort ARGS...` with an audit hook that appends every file the process
opens under $AUDIT_UNDER (a data folder) to $AUDIT_LOG: what a test checks the server never reads."""

import os
import sys

UNDER = os.path.realpath(os.environ["AUDIT_UNDER"])
LOG = os.environ["AUDIT_LOG"]


def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.realpath(path).startswith(UNDER + os.sep):
            with open(LOG, "a") as f:  # outside UNDER: not logged again
                f.write(path + "\n")


sys.addaudithook(hook)
from cohort.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
