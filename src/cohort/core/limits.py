"""Bounds shared by the config, the Python API and the loop (one source of truth per limit)."""

MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week; longer waits overflow the OS timers
MAX_ROUNDS = 10**9
MAX_SEED = 2**63 - 1
