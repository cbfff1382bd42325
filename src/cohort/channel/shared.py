"""The global arrays of a round in one shared-memory block: written once by the server, mapped
read-only by every worker, instead of pickled once per client."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from cohort.core.types import Groups

ALIGN = 64


@dataclass(frozen=True)
class SharedRef:
    """What a task carries instead of the arrays: the block's name and where each array lies."""

    name: str
    layout: tuple[tuple[str, str, str, tuple[int, ...], int], ...]  # (group, name, dtype, shape, offset)


class SharedGroups:
    """Owner side: create the block, copy the groups in; ``close`` unlinks it."""

    def __init__(self, groups: Groups) -> None:
        layout, offset = [], 0
        for g, arrays in groups.items():
            for k, a in arrays.items():
                layout.append((g, k, a.dtype.str, tuple(a.shape), offset))
                offset += -(-a.nbytes // ALIGN) * ALIGN
        self._shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
        for (g, k, _dtype, _shape, off) in layout:
            a = np.ascontiguousarray(groups[g][k])
            self._shm.buf[off : off + a.nbytes] = a.reshape(-1).view(np.uint8).data if a.nbytes else b""
        self.ref = SharedRef(self._shm.name, tuple(layout))

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


# Worker side: the block of the current broadcast stays mapped until the next one arrives.
_attached: tuple[str, shared_memory.SharedMemory, Groups] | None = None
_retired: list[shared_memory.SharedMemory] = []


def attach(ref: SharedRef) -> Groups:
    """Read-only arrays over the block ``ref`` names (mapped once per broadcast per worker)."""
    global _attached
    if _attached is not None and _attached[0] == ref.name:
        return _attached[2]
    _release()
    shm = shared_memory.SharedMemory(name=ref.name)
    view = shm.buf.toreadonly()  # over a read-only buffer, an array cannot be made writable again
    groups: dict[str, dict[str, np.ndarray]] = {}
    for g, k, dtype, shape, off in ref.layout:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        # frombuffer (not ndarray(buffer=...)) keeps numpy from making it writable again
        groups.setdefault(g, {})[k] = np.frombuffer(view, dtype=dt, count=count, offset=off).reshape(shape)
    _attached = (ref.name, shm, groups)
    return groups


def _release() -> None:
    global _attached
    if _attached is not None:
        _retired.append(_attached[1])
        _attached = None
    for shm in list(_retired):
        try:  # fails while a client still holds a view of the old arrays; retried at the next broadcast
            shm.close()
            _retired.remove(shm)
        except BufferError:
            pass
