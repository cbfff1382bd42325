"""Shakespeare by speaking role: a natural non-IID text dataset, as LEAF and McMahan et al. 2017 build it.

The file is ``<data dir>/shakespeare/input.txt`` (the char-rnn "tiny shakespeare" text, checked by md5,
downloaded when missing). Each speech starts with a line holding only its speaker's name and a colon;
every speaker with at least ``min_speeches`` speeches is one client. A client's examples are windows of
its speeches' characters: ``seq_len`` characters in, the next character to predict, one window every
``stride`` characters. Each client keeps the *last* share of its windows to evaluate on (a temporal
split, as LEAF does), so the test text follows the training text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.data.datasets import ArrayDataset
from cohort.data.mnist import resolve_data_dir
from cohort.data.partition import Partition, _offsets

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
MD5 = "6fb458f1232090904fb40fe944165e91"
SPEAKER = re.compile(r"^[A-Za-z][A-Za-z '&.,-]*:$")


@dataclass(frozen=True, eq=False)
class Speakers:
    data: ArrayDataset  # (n, seq_len) uint8 character ids -> the next character's id
    partition: Partition  # speaker -> training windows
    holdout: Partition | None  # speaker -> its last windows
    names: list[str]
    vocabulary: str  # character of each id


def text_path(data_dir: str | os.PathLike[str] | None, download: bool = True, timeout_s: float = 30.0) -> Path:
    path = resolve_data_dir(data_dir) / "shakespeare" / "input.txt"
    if not path.is_file():
        if not download:
            raise DataError(f"{path} not found (download is off). Put the tiny-shakespeare input.txt there, or point "
                            "data.dir, --data-dir or $COHORT_DATA_DIR at a folder whose shakespeare/ holds it")
        _fetch(path, timeout_s)
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != MD5:
        raise DataError(f"{path} has md5 {digest}, not the expected {MD5}: it is not the tiny-shakespeare file; "
                        "replace it (or delete it to download it again)")
    return path


def _fetch(path: Path, timeout_s: float) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".input.txt.", suffix=".part")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(URL, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out)
        if hashlib.md5(Path(tmp).read_bytes(), usedforsecurity=False).hexdigest() != MD5:
            raise DataError(f"the file downloaded from {URL} does not have the expected md5 {MD5}")
        os.replace(tmp, path)
    except OSError as e:  # offline, refused, or the folder cannot be written
        raise DataError(f"{path} is missing and could not be downloaded from {URL}: {e}. Put input.txt there by "
                        "hand (md5 6fb458f1...), or point data.dir at a folder that has shakespeare/input.txt") from e
    finally:
        if "tmp" in locals():
            Path(tmp).unlink(missing_ok=True)


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs in file order: a speech starts with a line of only a name and a colon,
    after a blank line (or the file's start), and runs to the next blank line."""
    out, speaker, lines, blank = [], None, [], True
    for line in text.splitlines() + [""]:
        if not line.strip():
            if speaker is not None and lines:
                out.append((speaker, "\n".join(lines)))
            speaker, lines, blank = None, [], True
            continue
        if blank and SPEAKER.match(line):
            speaker = line[:-1]
        elif speaker is not None:
            lines.append(line.strip())
        blank = False
    return out


def load_speakers(data_dir=None, *, download: bool = True, seq_len: int = 80, stride: int = 80, min_speeches: int = 10,
                  holdout: float = 0.2) -> Speakers:
    for name, value, low in (("seq_len", seq_len, 1), ("data.seq_stride", stride, 1), ("data.min_speeches", min_speeches, 1)):
        if not (isinstance(value, int) and value >= low):
            raise ConfigError(f"{name} is {value!r}; expected an integer >= {low}")
    text = text_path(data_dir, download).read_text(encoding="utf-8")
    by_speaker: dict[str, list[str]] = {}
    for speaker, speech in speeches(text):
        by_speaker.setdefault(speaker, []).append(speech)
    chosen = sorted(s for s, sp in by_speaker.items() if len(sp) >= min_speeches)
    vocabulary = "".join(sorted({c for s in chosen for sp in by_speaker[s] for c in sp} | {"\n"}))
    ids = np.full(max(map(ord, vocabulary)) + 1, 255, np.uint8)
    ids[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary))
    xs, ys, train, held, names = [], [], [], [], []
    start = 0
    for s in chosen:
        chars = ids[np.frombuffer("\n".join(by_speaker[s]).encode("utf-32-le"), np.uint32)]
        positions = np.arange(0, len(chars) - seq_len, stride)
        if len(positions) < 2:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(chars, seq_len)[positions]
        xs.append(windows)
        ys.append(chars[positions + seq_len].astype(np.int64))
        n = len(positions)
        k = min(max(1, int(np.floor(holdout * n + 0.5))), n - 1) if holdout > 0 else 0
        train.append(np.arange(start, start + n - k))
        held.append(np.arange(start + n - k, start + n))
        names.append(s)
        start += n
    if not names:
        raise DataError(f"no speaker has {min_speeches} speeches and 2 windows of {seq_len} characters; lower data.min_speeches")
    data = ArrayDataset(np.concatenate(xs), np.concatenate(ys), "classification", len(vocabulary), name="shakespeare")
    part = Partition(np.concatenate(train), _offsets(np.array([len(t) for t in train])))
    hold = Partition(np.concatenate(held), _offsets(np.array([len(h) for h in held]))) if holdout > 0 else None
    return Speakers(data, part, hold, names, vocabulary)
