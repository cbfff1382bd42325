"""Bounds shared by the config, the Python API and the loop (one source of truth per limit)."""

MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week; longer waits overflow the OS timers
MAX_ROUNDS = 10**9
MAX_SEED = 2**63 - 1
MAX_MODEL_ABS = 1e9  # a model weight larger than this (and larger than before the round) is never kept
MAX_LR = 1e3  # a learning rate above this overflows or diverges in any model: refused before training
MAX_NOISE_MULTIPLIER = 1e6  # DP noise multipliers: far past any useful ε, and no overflow of z · clip
MAX_CLIP = 1e6  # DP clip norms and the like
MAX_SECAGG_CLIP_RANGE = 1e4  # a coordinate's resolution in the ring is 2 · clip_range / 2^bits: above this, deltas vanish
