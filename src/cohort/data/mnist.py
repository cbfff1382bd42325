"""MNIST from the four standard gzip IDX files, checked by md5 and downloaded on demand."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from cohort.core.errors import DataError
from cohort.data.datasets import ArrayDataset

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DATA_DIR_ENV = "COHORT_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/cohort/data")

# md5 of the *uncompressed* bytes: gzip wrappers differ between copies, the IDX content does not.
FILES = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
_IDX_MAGIC = {0x801: 1, 0x803: 3}  # magic number -> number of dimensions
_CHUNK = 1 << 20


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else $COHORT_DATA_DIR, else ~/.cache/cohort/data."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    mirrors: tuple[str, ...] = MIRRORS,
    timeout_s: float = 30.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) MNIST from ``<data_dir>/mnist/``: 60,000 and 10,000 uint8 images of shape (1, 28, 28).

    Missing files are fetched from ``mirrors`` in turn when ``download`` is true. Arrays are read-only
    and shared between calls with the same folder.
    """
    return _load_folder(str(_present(data_dir, FILES, download, mirrors, timeout_s).resolve()))


def _missing_message(folder: Path, missing: list[str], tried: str) -> str:
    return (
        f"MNIST files not found in {folder}: missing {', '.join(missing)}.\n"
        f"Expected in that folder: {', '.join(FILES)}.\n"
        f"{tried}\n"
        f"To fix: put the four files in {folder}, or point data.dir in the config, --data-dir or ${DATA_DIR_ENV} at a folder "
        f"whose mnist/ subfolder holds them."
    )


def _download_missing(folder: Path, missing: list[str], mirrors: tuple[str, ...], timeout_s: float) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(_missing_message(folder, missing, f"Cannot create the folder to download into: {exc}")) from exc
    for name in missing:
        errors = []
        for mirror in mirrors:
            url = mirror + name
            try:
                _fetch(url, folder / name, FILES[name], timeout_s)
                break
            except (OSError, ValueError, http.client.HTTPException, DataError) as exc:  # URLError is an OSError
                errors.append(f"  {url}: {type(exc).__name__}: {exc}")
        else:
            tried = "Tried mirrors:\n" + "\n".join(errors) if errors else "No mirrors were given (mirrors=())."
            raise DataError(_missing_message(folder, missing, tried))


def _fetch(url: str, target: Path, expected_md5: str, timeout_s: float) -> None:
    """Download ``url`` to a temp file beside ``target``, check it, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            shutil.copyfileobj(response, out, _CHUNK)
        actual = _md5_of_gzip(tmp)
        if actual != expected_md5:
            raise DataError(f"md5 checksum mismatch after decompression: expected {expected_md5}, got {actual}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _md5_of_gzip(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"not a valid gzip file: {exc}") from exc
    return digest.hexdigest()


def load_mnist_test(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                    mirrors: tuple[str, ...] = MIRRORS, timeout_s: float = 30.0) -> ArrayDataset:
    """MNIST's 10,000 test images alone, reading only the two test files: for a server that evaluates and
    must not open the training set."""
    names = [n for n in FILES if n.startswith("t10k")]
    return _load_test(str(_present(data_dir, names, download, mirrors, timeout_s).resolve()))


def _present(data_dir, names, download: bool, mirrors: tuple[str, ...], timeout_s: float) -> Path:
    """The MNIST folder, once ``names`` are in it (fetched from ``mirrors`` when missing and ``download``)."""
    folder = resolve_data_dir(data_dir) / "mnist"
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        if not download:
            raise DataError(_missing_message(folder, missing, "download=False, so no mirror was tried."))
        _download_missing(folder, missing, mirrors, timeout_s)
    return folder


@functools.lru_cache(maxsize=4)
def _load_test(folder: str) -> ArrayDataset:
    path = Path(folder)
    return _as_dataset(_read_idx(path / "t10k-images-idx3-ubyte.gz"), _read_idx(path / "t10k-labels-idx1-ubyte.gz"),
                       "mnist-test")


@functools.lru_cache(maxsize=4)
def _load_folder(folder: str) -> tuple[ArrayDataset, ArrayDataset]:
    path = Path(folder)
    x_train = _read_idx(path / "train-images-idx3-ubyte.gz")
    y_train = _read_idx(path / "train-labels-idx1-ubyte.gz")
    x_test = _read_idx(path / "t10k-images-idx3-ubyte.gz")
    y_test = _read_idx(path / "t10k-labels-idx1-ubyte.gz")
    return _as_dataset(x_train, y_train, "mnist-train"), _as_dataset(x_test, y_test, "mnist-test")


def _as_dataset(images: np.ndarray, labels: np.ndarray, name: str) -> ArrayDataset:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{name}: images of shape {images.shape} and labels of shape {labels.shape}; "
                        f"expected (n, 28, 28) and (n,)")
    x = images.reshape(len(images), 1, 28, 28)
    y = labels.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return ArrayDataset(x=x, y=y, task="classification", num_classes=10, x_scale=1 / 255, name=name)


def _read_idx(path: Path) -> np.ndarray:
    """Parse one gzip IDX file after checking the md5 of its uncompressed bytes."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc}); delete it to download it again") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    expected = FILES[path.name]
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != expected:
        raise DataError(f"{path}: md5 checksum of the uncompressed bytes is {actual}, expected {expected}; "
                        f"the file is corrupt or not the original MNIST file, delete it to download it again")
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = int(np.frombuffer(data, ">i4", count=1)[0])
    if magic not in _IDX_MAGIC:
        raise DataError(f"{path}: IDX magic number {magic:#x}; expected 0x801 (labels) or 0x803 (images)")
    ndim = _IDX_MAGIC[magic]
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header of {header} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path}: header declares dims {dims} ({header + int(np.prod(dims))} bytes) but the "
                        f"file has {len(data)} bytes")
    # frombuffer over bytes is already read-only.
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)
