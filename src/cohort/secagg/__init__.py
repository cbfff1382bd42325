"""Secure aggregation: the server learns only the sum (``protocol.py``; the primitives in ``crypto.py``)."""

from cohort.secagg.crypto import SecAggError
from cohort.secagg.protocol import (
    SecAggClient, SecAggServer, bits_for, dequantize_sum, harary_graph, quantize,
)

__all__ = ["SecAggClient", "SecAggError", "SecAggServer", "bits_for", "dequantize_sum", "harary_graph", "quantize"]
