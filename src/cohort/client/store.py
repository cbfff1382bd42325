"""Per-client state in simulation: kept by client id, in memory up to a size, spilled to disk past it.

Memory grows with the clients that *have* state (SCAFFOLD's ``cᵢ`` exists once a client has trained),
never with the population. Past ``max_memory_bytes`` the least recently used entries are written to
safetensors files in a spill folder and read back when their client is sampled again.
"""

from __future__ import annotations

import json
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from cohort.core.arrays import nbytes
from cohort.core.errors import ConfigError
from cohort.core.types import Groups

SEP = "/"  # group/name keys in a spill file; group names may not contain it


class ClientStateStore:
    def __init__(self, max_memory_bytes: int = 1 << 30, spill_dir: str | Path | None = None) -> None:
        if not (isinstance(max_memory_bytes, int) and max_memory_bytes >= 0):
            raise ConfigError(f"simulation.client_state_memory is {max_memory_bytes!r}; expected bytes >= 0")
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[int, Groups] = OrderedDict()  # least recently used first
        self._sizes: dict[int, int] = {}
        self._spilled: set[int] = set()
        self._spill_root = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.nbytes_in_memory = 0

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def __contains__(self, cid: int) -> bool:
        return cid in self._memory or cid in self._spilled

    def ids(self) -> list[int]:
        return sorted([*self._memory, *self._spilled])

    def get(self, cid: int) -> Groups | None:
        cid = int(cid)
        if cid in self._memory:
            self._memory.move_to_end(cid)
            return self._memory[cid]
        if cid in self._spilled:
            state = self._read(cid)
            self._spilled.discard(cid)
            self._path(cid).unlink(missing_ok=True)
            self._keep(cid, state)
            return state
        return None

    def put(self, cid: int, state: Groups | None) -> None:
        cid = int(cid)
        self._drop(cid)
        if state is not None:
            for g in state:
                if SEP in g:
                    raise ValueError(f"client state group {g!r} contains {SEP!r}")
            self._keep(cid, {g: dict(a) for g, a in state.items()})

    def items(self) -> Iterator[tuple[int, Groups]]:
        """Every client's state in id order (spilled entries read one at a time, left on disk)."""
        for cid in self.ids():
            yield cid, self._memory[cid] if cid in self._memory else self._read(cid)

    def replace_all(self, states: Mapping[int, Groups]) -> None:
        """Forget everything and hold ``states`` instead (a resume)."""
        for cid in list(self._memory) + list(self._spilled):
            self._drop(cid)
        for cid, state in states.items():
            self.put(cid, state)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _keep(self, cid: int, state: Groups) -> None:
        size = sum(nbytes(a) for a in state.values())
        self._memory[cid] = state
        self._sizes[cid] = size
        self.nbytes_in_memory += size
        while self.nbytes_in_memory > self.max_memory_bytes and len(self._memory) > 0:
            old, old_state = self._memory.popitem(last=False)
            self.nbytes_in_memory -= self._sizes.pop(old)
            self._write(old, old_state)
            self._spilled.add(old)

    def _drop(self, cid: int) -> None:
        if cid in self._memory:
            del self._memory[cid]
            self.nbytes_in_memory -= self._sizes.pop(cid)
        if cid in self._spilled:
            self._spilled.discard(cid)
            self._path(cid).unlink(missing_ok=True)

    def _dir(self) -> Path:
        if self._spill_root is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="cohort-client-state-")
            return Path(self._tmp.name)
        self._spill_root.mkdir(parents=True, exist_ok=True)
        return self._spill_root

    def _path(self, cid: int) -> Path:
        return self._dir() / f"client-{cid}.safetensors"

    def _write(self, cid: int, state: Groups) -> None:
        from safetensors.numpy import save_file

        flat = {f"{g}{SEP}{k}": np.require(a, requirements="C") for g, arrays in state.items() for k, a in arrays.items()}
        # safetensors sorts its keys: the order of groups and names is kept in the metadata
        save_file(flat, str(self._path(cid)), metadata={"order": json.dumps(list(flat))})

    def _read(self, cid: int) -> Groups:
        from safetensors import safe_open

        with safe_open(str(self._path(cid)), framework="numpy") as f:
            out: dict[str, dict] = {}
            for key in json.loads((f.metadata() or {}).get("order", "[]")) or list(f.keys()):
                g, _, name = key.partition(SEP)
                out.setdefault(g, {})[name] = f.get_tensor(key)
        return out

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
