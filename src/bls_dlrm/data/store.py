"""The one on-disk batch format of every data source, and ``BatchStore`` to read it.

A dataset is a directory of plain ``.npy`` files, memory-mappable, plus ``manifest.json``:

==================  ===================  ====================================================
file                dtype, shape         meaning
==================  ===================  ====================================================
``dense.npy``       float32 (N, B, F)    dense features of batch i, sample b
``lengths.npy``     int32 (N, T, B)      bag size (pooling factor) of table t, sample b
``indices.npy``     int64 (nnz,)         row indices; batch-major, then table, sample, bag
``batch_ptr.npy``   int64 (N + 1,)       batch i's indices are ``indices[ptr[i]:ptr[i+1]]``
``labels.npy``      float32 (N, B)       click labels (only for labelled sources: Criteo)
==================  ===================  ====================================================

Batch i's indices are thus contiguous and already in ``SparseBatch``'s table-major layout;
``lengths[i]`` becomes its offsets with one cumulative sum. All batches have the same size B
(a partial last batch is dropped at write time), which keeps the arrays rectangular.

``manifest.json`` records the format version, the source and its parameters and seed, the
model config the data is for (name, ``table_rows`` after the row cap, ``num_dense``), the
shapes, and per file its size and sha256. Writers fill a ``<dir>.partial`` directory and
rename it at the end, manifest last, so an interrupted write never looks complete. Readers
check the manifest against the files (sha256 unless told to skip) and, if given, against
the expected model config; every mismatch is a ``DatasetError`` naming the file or key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

from ..model.config import ModelConfig
from ..model.sparse import SparseBatch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "Batch",
    "BatchStore",
    "DatasetError",
    "DatasetWriter",
    "MissingFileError",
    "sha256_file",
]

FORMAT = "bls-dlrm-batches"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset that does not match its manifest or the expected model config."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file the manifest lists (or the manifest itself) is not there."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (datasets can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Batch(NamedTuple):
    """One batch: dense features ``(B, F)``, the sparse bags, labels ``(B,)`` or None."""

    dense: torch.Tensor
    sparse: SparseBatch
    labels: torch.Tensor | None


# -- writing -------------------------------------------------------------------------------


class _NpyAppender:
    """Streams rows into an ``.npy`` file whose leading dimension is known only at the end.

    The header is written with room for any row count and rewritten, padded to the same
    length, on ``close``; numpy reads the padding as whitespace.
    """

    _RESERVED = 10**18

    def __init__(self, path: Path, dtype: np.dtype, tail: tuple[int, ...]):
        self.path, self.dtype, self.tail = path, np.dtype(dtype), tail
        self.rows = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._header_len = len(self._header(self._RESERVED))
        self._file.write(self._header(self._RESERVED))

    def _header(self, rows: int, length: int | None = None) -> bytes:
        shape = (rows, *self.tail)
        text = (
            f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, "
            f"'fortran_order': False, 'shape': {shape!r}, }}"
        )
        prefix = 10  # magic (6) + version (2) + header length (2)
        if length is None:
            length = -(-(prefix + len(text) + 1) // 64) * 64
        body = text.ljust(length - prefix - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + (len(body)).to_bytes(2, "little") + body.encode("latin1")

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.tail:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, need {self.tail}")
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header(self.rows, self._header_len))
        self._file.close()


class DatasetWriter:
    """Writes batches in the store format; ``finish`` seals the directory with its manifest.

    Used by every source (synthetic generator, Criteo preprocessing), so that one reader and
    one set of checks serve them all.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: ModelConfig,
        batch_size: int,
        *,
        labels: bool,
        overwrite: bool = False,
    ):
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} exists; pass overwrite=True to replace it")
        self.config, self.batch_size, self.has_labels = config, int(batch_size), labels
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.tmp = self.out_dir.with_name(self.out_dir.name + ".partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        t, b = config.num_tables, self.batch_size
        self._dense = _NpyAppender(self.tmp / "dense.npy", np.float32, (b, config.num_dense))
        self._lengths = _NpyAppender(self.tmp / "lengths.npy", np.int32, (t, b))
        self._indices = _NpyAppender(self.tmp / "indices.npy", np.int64, ())
        self._labels = _NpyAppender(self.tmp / "labels.npy", np.float32, (b,)) if labels else None
        self._ptr = [0]

    @property
    def num_batches(self) -> int:
        return len(self._ptr) - 1

    def add(
        self,
        dense: np.ndarray,
        lengths: np.ndarray,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> None:
        """Append one batch: dense (B, F), lengths (T, B), packed indices, labels (B,)."""
        if int(np.sum(lengths, dtype=np.int64)) != len(indices):
            raise ValueError(f"lengths sum to {np.sum(lengths)}, got {len(indices)} indices")
        if (labels is None) == self.has_labels:
            raise ValueError("labels must be given exactly when the dataset has labels")
        self._dense.append(np.asarray(dense)[None])
        self._lengths.append(np.asarray(lengths)[None])
        self._indices.append(np.asarray(indices))
        if self._labels is not None:
            self._labels.append(np.asarray(labels)[None])
        self._ptr.append(self._ptr[-1] + len(indices))

    def finish(self, source: str, seed: int | None, params: Mapping[str, Any]) -> Path:
        """Close the files, write the manifest, move the directory into place."""
        appenders = [self._dense, self._lengths, self._indices, self._labels]
        for a in appenders:
            if a is not None:
                a.close()
        np.save(self.tmp / "batch_ptr.npy", np.asarray(self._ptr, dtype=np.int64))
        names = ["dense.npy", "lengths.npy", "indices.npy", "batch_ptr.npy"]
        if self.has_labels:
            names.append("labels.npy")
        files = {
            name: {
                "bytes": (self.tmp / name).stat().st_size,
                "sha256": sha256_file(self.tmp / name),
            }
            for name in names
        }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": source,
            "config": {
                "name": self.config.name,
                "table_rows": list(self.config.rows),
                "num_dense": self.config.num_dense,
                "max_rows": self.config.max_rows,
            },
            "num_tables": self.config.num_tables,
            "num_dense": self.config.num_dense,
            "batch_size": self.batch_size,
            "num_batches": self.num_batches,
            "nnz": self._ptr[-1],
            "has_labels": self.has_labels,
            "seed": seed,
            "params": dict(params),
            "files": files,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        self.tmp.rename(self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        """Drop the partial directory (after an error)."""
        for a in (self._dense, self._lengths, self._indices, self._labels):
            if a is not None and not a._file.closed:
                a._file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- reading -------------------------------------------------------------------------------


_REQUIRED_KEYS = (
    "config", "num_tables", "num_dense", "batch_size", "num_batches", "has_labels", "files",
)  # fmt: skip


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise MissingFileError(f"{mpath}: no manifest; not a dataset directory (or incomplete)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{mpath}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{mpath}: key 'format' is {manifest.get('format')!r}, not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{mpath}: key 'format_version' is {manifest.get('format_version')!r}, "
            f"this code reads version {FORMAT_VERSION}"
        )
    for key in _REQUIRED_KEYS:
        if key not in manifest:
            raise DatasetError(f"{mpath}: key {key!r} missing")
    for key in ("name", "table_rows", "num_dense"):
        if key not in manifest["config"]:
            raise DatasetError(f"{mpath}: key 'config.{key}' missing")
    return manifest


class BatchStore:
    """Read-only access to a dataset directory; batch i as torch tensors.

    ``verify=True`` (default) hashes every file against the manifest; a workflow that has
    verified a dataset once can open it with ``verify=False``, which still checks that every
    file is present with the recorded size and shape. ``expect_config`` fails early when
    the data was made for another model (name, row counts, dense width).

    Arrays are memory-mapped copy-on-write, so opening is instant, only touched pages are
    read, and the tensors handed out may even be modified without touching the files.
    """

    def __init__(
        self,
        path: str | Path,
        expect_config: ModelConfig | None = None,
        verify: bool = True,
    ):
        self.path = Path(path)
        if not self.path.is_dir():
            raise MissingFileError(f"{self.path}: dataset directory does not exist")
        self.manifest = _read_manifest(self.path)
        if expect_config is not None:
            self.check_config(expect_config)
        self._check_files(hash_files=verify)
        self.num_batches: int = self.manifest["num_batches"]
        self.batch_size: int = self.manifest["batch_size"]
        self.num_tables: int = self.manifest["num_tables"]
        self.num_dense: int = self.manifest["num_dense"]
        self.table_rows: list[int] = list(self.manifest["config"]["table_rows"])
        self.has_labels: bool = bool(self.manifest["has_labels"])
        self._dense = self._load("dense.npy", (self.num_batches, self.batch_size, self.num_dense))
        self._lengths = self._load(
            "lengths.npy", (self.num_batches, self.num_tables, self.batch_size)
        )
        self._ptr = np.asarray(self._load("batch_ptr.npy", (self.num_batches + 1,)))
        if self._ptr[0] != 0 or np.any(np.diff(self._ptr) < 0):
            raise DatasetError(
                f"{self.path / 'batch_ptr.npy'}: offsets must start at 0 and never decrease"
            )
        self._indices = self._load("indices.npy", (int(self._ptr[-1]),))
        self._labels = (
            self._load("labels.npy", (self.num_batches, self.batch_size))
            if self.has_labels
            else None
        )

    def check_config(self, config: ModelConfig) -> None:
        """Raise ``DatasetError`` naming the manifest key that disagrees with ``config``."""
        have = self.manifest.get("config", {})
        mpath = self.path / MANIFEST
        expected = {
            "name": config.name,
            "num_dense": config.num_dense,
            "table_rows": list(config.rows),
        }
        for key, want in expected.items():
            got = have.get(key)
            if got == want:
                continue
            detail = ""
            if key == "table_rows" and isinstance(got, list) and len(got) == len(want):
                t = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
                detail = f" (table {t}: {got[t]} rows in the data, {want[t]} in the model)"
            elif key == "table_rows" and isinstance(got, list):
                detail = f" ({len(got)} tables in the data, {len(want)} in the model)"
            raise DatasetError(
                f"{mpath}: key config.{key} is {got!r}, but the model config "
                f"{config.name!r} needs {want!r}{detail}"
            )

    def _check_files(self, hash_files: bool) -> None:
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise DatasetError(f"{self.path / MANIFEST}: key 'files' missing or empty")
        for name, meta in files.items():
            fpath = self.path / name
            if not fpath.is_file():
                raise MissingFileError(f"{fpath}: listed in the manifest but missing")
            size = fpath.stat().st_size
            if size != meta.get("bytes"):
                raise DatasetError(
                    f"{fpath}: {size} bytes, the manifest says {meta.get('bytes')} "
                    "(file truncated or replaced)"
                )
            if hash_files:
                digest = sha256_file(fpath)
                if digest != meta.get("sha256"):
                    raise DatasetError(
                        f"{fpath}: sha256 {digest} does not match the manifest's "
                        f"{meta.get('sha256')} (file corrupted or modified)"
                    )

    def verify(self) -> None:
        """Hash every file against the manifest (the check ``verify=True`` does on open)."""
        self._check_files(hash_files=True)

    def _load(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        fpath = self.path / name
        try:
            # mmap cannot map zero bytes; an empty array is read normally
            empty = 0 in shape
            arr = np.load(fpath, mmap_mode=None if empty else "c", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatasetError(f"{fpath}: unreadable .npy ({exc})") from None
        if arr.shape != shape:
            raise DatasetError(f"{fpath}: shape {arr.shape}, the manifest implies {shape}")
        return arr

    def __len__(self) -> int:
        return self.num_batches

    def numpy_batch(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Batch i as arrays: dense (B, F), lengths (T, B), packed indices, labels or None."""
        if not -self.num_batches <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range for {self.num_batches} batches")
        i %= self.num_batches
        lo, hi = int(self._ptr[i]), int(self._ptr[i + 1])
        labels = self._labels[i] if self._labels is not None else None
        return self._dense[i], self._lengths[i], self._indices[lo:hi], labels

    def batch(self, i: int) -> Batch:
        """Batch i as tensors (zero-copy views of the mapped files where possible)."""
        dense, lengths, indices, labels = self.numpy_batch(i)
        sparse = SparseBatch.from_lengths(torch.from_numpy(indices), lengths)
        return Batch(
            torch.from_numpy(dense),
            sparse,
            torch.from_numpy(labels) if labels is not None else None,
        )

    def __getitem__(self, i: int) -> Batch:
        return self.batch(i)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self.num_batches):
            yield self.batch(i)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"BatchStore({str(self.path)!r}, config={m['config']['name']!r}, "
            f"batches={m['num_batches']}, batch_size={m['batch_size']}, "
            f"source={m.get('source')!r})"
        )
