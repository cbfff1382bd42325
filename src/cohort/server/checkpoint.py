"""Durable state: the whole server state (and the simulation's per-client store) after every round.

``<run folder>/checkpoints/round-NNNNNNNN.safetensors`` holds every array; the ``.json`` beside it
holds the rest (typed, see ``cohort.core.tree``) and the SHA-256 of the arrays file. The JSON is
written last, each file to a temporary name, synced, then renamed: a checkpoint exists only once
it is complete. The previous one is kept until the next is complete, so a kill at any moment
leaves at least one whole checkpoint; a corrupt latest one falls back to the one before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cohort.core.errors import CohortError, ConfigError
from cohort.core.tree import decode, encode
from cohort.core.types import Groups
from cohort.server.state import ServerState

FORMAT = 1
KEEP = 2
PRIVATE = 0o600  # checkpoints hold secrets (central DP's noise key): only the server's own user reads them
_NAME = re.compile(r"^round-(\d{8,})\.json$")


@dataclass(frozen=True)
class Checkpoint:
    state: ServerState
    clients: dict[int, Groups]  # per-client state of a simulation
    path: Path  # the .json file it came from
    skipped: tuple[str, ...] = ()  # why newer checkpoints were not usable


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """``data`` to ``path`` through a synced temporary file and a rename (then the folder is synced).
    ``mode``: the file's permissions from its first byte on (0o600: only the owner reads it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a killed write may have other permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(folder: str | Path, state: ServerState, clients: Mapping[int, Groups] | None = None) -> Path:
    """Write a checkpoint of ``state`` in ``folder`` (created if needed); remove the ones before the previous.
    A write that fails (a full disk) raises CohortError, and the checkpoints already there stay whole."""
    try:
        return _save(Path(folder), state, clients)
    except OSError as e:
        for tmp in Path(folder).glob("*.tmp"):  # a half-written one: never read, and it holds space
            tmp.unlink(missing_ok=True)
        raise CohortError(f"cannot write the checkpoint of round {state.round} in {folder}: {e.strerror or e}; the "
                          "checkpoints before it are kept (free space, then resume)") from e


def _save(folder: Path, state: ServerState, clients: Mapping[int, Groups] | None) -> Path:
    from safetensors.numpy import save as to_bytes

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # the server's private state: the DP noise key, the per-client state
    arrays: dict = {}
    tree = {"state": encode(state, arrays), "clients": encode(dict(clients or {}), arrays)}
    blob = to_bytes(arrays) if arrays else b""
    stem = f"round-{state.round:08d}"
    write_atomic(folder / f"{stem}.safetensors", blob, PRIVATE)
    meta = {"format": FORMAT, "round": state.round, "arrays_sha256": hashlib.sha256(blob).hexdigest(),
            "tree_sha256": _tree_digest(tree), **tree}
    write_atomic(folder / f"{stem}.json", json.dumps(meta).encode("utf-8"), PRIVATE)
    for old in _listed(folder)[KEEP:]:
        for suffix in (".json", ".safetensors"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return folder / f"{stem}.json"


def structure(tree: object) -> object:
    """The shape of a state tree: its containers and types, each array as (dtype, shape), each plain
    value as its type name."""
    arrays: dict = {}

    def shape(node):
        if isinstance(node, dict):
            if "array" in node:
                a = arrays[node["array"]]
                return ["array", str(a.dtype), list(a.shape)]
            return {k: v if k in ("namedtuple", "dataclass", "enum", "scalar")
                    else [[key, shape(val)] for key, val in v] if k == "dict" else shape(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [shape(v) for v in node]
        return type(node).__name__

    return shape(encode(tree, arrays))


def check_fits(state: ServerState, algorithm) -> None:
    """Raise ConfigError unless ``state`` has the groups and step states ``algorithm`` would have."""
    try:
        groups, steps = algorithm.init(algorithm.whole(state.groups))
    except (KeyError, ConfigError) as e:
        raise ConfigError(f"the checkpoint's groups ({sorted(state.groups)}) do not fit algorithm {algorithm.name!r}: "
                          f"{e}; resume with the config the run was started with") from e
    if structure(groups) != structure(state.groups):
        raise ConfigError(f"the checkpoint's groups ({sorted(state.groups)}) do not fit algorithm {algorithm.name!r} "
                          f"({sorted(groups)}); resume with the config the run was started with")
    if structure(steps) != structure(dict(state.steps)):
        raise ConfigError(f"the checkpoint's step states do not fit algorithm {algorithm.name!r} as configured now "
                          "(a changed server optimizer or algorithm?); resume with the config the run was started with")


def _tree_digest(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode("utf-8")).hexdigest()


def _listed(folder: Path) -> list[Path]:
    """Checkpoint JSON files, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("round-*.json") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load(folder: str | Path) -> Checkpoint:
    """The newest complete, intact checkpoint in ``folder``; older ones stand in for corrupt newer ones
    (``Checkpoint.skipped`` says why). Raises ConfigError when none can be read."""
    from safetensors.numpy import load as from_bytes

    folder = Path(folder)
    problems: list[str] = []
    for path in _listed(folder) if folder.is_dir() else []:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT}")
            if _tree_digest({"state": meta.get("state"), "clients": meta.get("clients")}) != meta.get("tree_sha256"):
                raise ValueError("its state does not match its checksum (edited or damaged)")
            blob = path.with_suffix(".safetensors").read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["arrays_sha256"]:
                raise ValueError("its arrays file does not match its checksum (truncated or changed)")
            arrays = from_bytes(blob) if blob else {}
            state = decode(meta["state"], arrays)
            clients = decode(meta["clients"], arrays)
            if not isinstance(state, ServerState):
                raise ValueError(f"it holds a {type(state).__name__}, not a server state")
            trained = [r for r in state.history if not (hasattr(r, "get") and r.get("round") == 0)]  # round 0: the initial model
            if state.round != meta.get("round") or len(trained) != state.round:
                raise ValueError(f"it says round {meta.get('round')!r} but holds round {state.round!r} with "
                                 f"{len(trained)} records")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            problems.append(f"{path.name}: {e}")
            continue
        return Checkpoint(state, clients, path, tuple(problems))
    detail = "; ".join(problems) if problems else "there is none"
    raise ConfigError(f"no usable checkpoint in {str(folder)!r}: {detail}. A run writes checkpoints when "
                      "output.checkpoint = true; start it anew without --resume")
