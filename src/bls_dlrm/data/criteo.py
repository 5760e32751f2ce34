"""Criteo click logs (Kaggle display advertising, Terabyte) into the store format.

Input format (both datasets): one sample per line, tab-separated, 40 fields: the click label
(0/1), 13 integer count features, 26 categorical features as hexadecimal strings (hashes
Criteo applied before release). Any feature may be empty.

Preprocessing, streamed so that a Terabyte day file (tens of GB) never has to fit in memory:

- dense: ``log(x + 1)`` with negative counts clamped to 0 and missing ones read as 0, as the
  reference DLRM does; stored float32.
- categorical: ``int(hex, 16) mod rows[t]``, with a missing value read as 0 -- the reference
  DLRM's hashing mode (its ``max_ind_range`` option), where ``rows[t]`` is the table's row
  count after the config's cap. Unlike the reference's default mode there is no
  vocabulary pass over the data: one pass suffices, and distinct raw values may share a
  row (hash collisions), which changes nothing about the lookup cost we measure.
- one index per sample and table (pooling factor 1); labels stored as float32.
- samples are grouped in batches of ``batch_size`` in file order; a final partial batch is
  dropped (its size is recorded in the manifest).

Parsing is vectorised (Arrow's CSV reader, hex digits decoded for whole columns at once),
on the order of 1e5 lines per second, so the Kaggle file takes minutes, not hours.

``fetch`` is the download step: it copies a local file or downloads a URL, verifies the
sha256 of the bytes as fetched, unpacks ``.gz`` (or one ``member`` of a tar archive, e.g.
``train.txt`` from the Kaggle ``dac.tar.gz``), and leaves a ``.fetch.json`` record with the
checksums next to the result. ``write_criteo_sample`` writes a small synthetic file in the
Criteo format, for tests and for a workflow without the real data.

``prepare_source`` is the workflow's entry: it makes a Criteo source available as a local
file whose sha256 has been checked, once. Hashing a file of tens of GB takes minutes, so
the result goes into a record (path, size, modification time, sha256); while the file keeps
its size and modification time, later calls trust the record instead of hashing again. A
source that is absent or cannot be fetched raises ``SourceUnavailableError``, whose message
says where the published files are (``CRITEO_SOURCES``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from ..model.config import ModelConfig, get_config
from .store import DatasetError, DatasetWriter, MissingFileError

__all__ = [
    "CRITEO_KINDS",
    "CRITEO_SOURCES",
    "FETCH_RECORD_SUFFIX",
    "NUM_CATEGORICAL",
    "NUM_DENSE",
    "SourceUnavailableError",
    "fetch",
    "hash_categorical",
    "log_transform",
    "prepare_source",
    "preprocess_criteo",
    "write_criteo_sample",
]

NUM_DENSE = 13
NUM_CATEGORICAL = 26
CRITEO_KINDS = ("kaggle", "terabyte")

#: Where the published files are, by kind (named in the error for an absent source).
CRITEO_SOURCES = {
    "kaggle": (
        "Criteo Kaggle (Display Advertising Challenge): train.txt (45,840,617 lines, about "
        "11 GB) inside the archive published by Criteo at "
        "https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz"
        " (formerly dac.tar.gz; about 4.3 GB)"
    ),
    "terabyte": (
        "Criteo Terabyte (1TB Click Logs): one file per day, day_0.gz .. day_23.gz, "
        "published by Criteo at https://huggingface.co/datasets/criteo/CriteoClickLogs "
        "(see https://ailab.criteo.com/download-criteo-1tb-click-logs-dataset/)"
    ),
}

#: Suffix of the record ``fetch`` writes next to what it fetched.
FETCH_RECORD_SUFFIX = ".fetch.json"

_DENSE_COLS = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
_CAT_COLS = [f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)]
_COLUMNS = ["label", *_DENSE_COLS, *_CAT_COLS]

# ASCII -> hex digit value, 255 for anything else.
_HEX = np.full(256, 255, dtype=np.uint8)
for _c in b"0123456789":
    _HEX[_c] = _c - ord("0")
for _c in b"abcdef":
    _HEX[_c] = _c - ord("a") + 10
    _HEX[_c - 32] = _c - ord("a") + 10
_MAX_HEX_DIGITS = 16  # fits uint64

#: Bytes of input per parsed chunk (about 60k Criteo lines).
_CHUNK_BYTES = 16 << 20


def _is_tty() -> bool:
    return sys.stderr.isatty()


# -- transforms (pure, vectorised) ----------------------------------------------------------


def log_transform(counts: np.ndarray) -> np.ndarray:
    """``log(max(x, 0) + 1)`` as float32; NaN (missing) counts become 0."""
    x = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0)
    return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def _hex_values(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, int]:
    """Parse packed strings (Arrow layout: ``offsets``, ``data`` bytes) as hexadecimals.

    Vectorised over all characters: digit ``j`` of a string ending at ``end`` is shifted by
    ``4 * (end - 1 - j)`` and a string's digits are summed (their bits never overlap).
    Returns the values (uint64; "" -> 0) and the index of the first invalid string, or -1.
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    start = int(offsets[0])
    data = data[start : int(offsets[-1])]
    digits = _HEX[data]
    bad = lengths > _MAX_HEX_DIGITS
    bad_chars = np.flatnonzero(digits == 255)
    if bad_chars.size:
        bad[np.searchsorted(offsets - start, bad_chars, side="right") - 1] = True
    if bad.any():
        return np.zeros(0, dtype=np.uint64), int(np.flatnonzero(bad)[0])
    values = np.zeros(n, dtype=np.uint64)
    if data.size:
        ends = np.repeat(offsets[1:] - start, lengths)
        shift = ((ends - 1 - np.arange(data.size)) * 4).astype(np.uint64)
        shifted = digits.astype(np.uint64) << shift
        nonempty = lengths > 0
        values[nonempty] = np.add.reduceat(shifted, (offsets[:-1] - start)[nonempty])
    return values, -1


def _hash_binary_array(arr: pa.Array, rows: int) -> tuple[np.ndarray, int]:
    """Table rows of an Arrow binary array, and the first invalid position or -1."""
    offsets_buf, data_buf = arr.buffers()[1], arr.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    values, bad = _hex_values(offsets.astype(np.int64), data)
    if bad >= 0:
        return values, bad
    return (values % np.uint64(rows)).astype(np.int64), -1


def hash_categorical(values: Sequence[str | bytes] | np.ndarray, rows: int) -> np.ndarray:
    """Rows ``int(hex, 16) mod rows`` of hex strings (str or bytes; "" -> 0), as int64.

    Raises ``ValueError`` naming the first offending value and its position for input that
    is not a hexadecimal of at most 16 digits.
    """
    items = [v.encode("latin-1") if isinstance(v, str) else bytes(v) for v in np.ravel(values)]
    result, bad = _hash_binary_array(pa.array(items, type=pa.binary()), rows)
    if bad >= 0:
        raise ValueError(
            f"value {items[bad].decode('latin-1')!r} at position {bad} is not a "
            f"hexadecimal of at most {_MAX_HEX_DIGITS} digits"
        )
    return result.reshape(np.shape(values))


# -- preprocessing --------------------------------------------------------------------------


def _resolve_config(
    config: ModelConfig | str | None, kind: str, max_rows: int | None
) -> ModelConfig:
    if kind not in CRITEO_KINDS:
        raise ValueError(f"kind must be one of {CRITEO_KINDS}, got {kind!r}")
    if config is None:
        config = kind
    if isinstance(config, str):
        config = get_config(config)
    if max_rows is not None:
        config = dataclasses.replace(config, max_rows=max_rows)
    if config.num_tables != NUM_CATEGORICAL or config.num_dense != NUM_DENSE:
        raise ValueError(
            f"config {config.name!r} has {config.num_tables} tables and {config.num_dense} "
            f"dense features; Criteo data needs {NUM_CATEGORICAL} and {NUM_DENSE}"
        )
    return config


def _read_chunks(src: Path, limit: int | None) -> Iterator[tuple[int, bytes]]:
    """``(number of its first line, bytes)`` per chunk of whole lines, up to ``limit`` lines."""
    opener = gzip.open if src.suffix == ".gz" else open
    first, carry = 1, b""
    with opener(src, "rb") as f:
        while limit is None or first <= limit:
            block = f.read(_CHUNK_BYTES)
            if not block and not carry:
                return
            buf = carry + block
            if block:
                cut = buf.rfind(b"\n") + 1
                buf, carry = buf[:cut], buf[cut:]
                if not buf:
                    continue
            else:  # last line without a newline
                buf, carry = buf + b"\n", b""
            lines = buf.count(b"\n")
            if limit is not None and first + lines - 1 > limit:
                newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == ord("\n"))
                buf = buf[: int(newlines[limit - first]) + 1]
                lines = limit - first + 1
            yield first, buf
            first += lines


def _parse_chunk(chunk: bytes, first_line: int, src: Path) -> pa.Table:
    """Split one chunk into typed columns; errors name the file and line."""
    types = {"label": pa.float64(), **dict.fromkeys(_DENSE_COLS, pa.float64())}
    types.update(dict.fromkeys(_CAT_COLS, pa.binary()))
    try:
        return pacsv.read_csv(
            io.BytesIO(chunk),
            read_options=pacsv.ReadOptions(column_names=_COLUMNS),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, escape_char=False, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        for k, line in enumerate(chunk.split(b"\n")[:-1]):
            fields = line.count(b"\t") + 1
            if fields != len(_COLUMNS):
                raise DatasetError(
                    f"{src}: line {first_line + k}: expected {len(_COLUMNS)} tab-separated "
                    f"fields, found {fields}"
                ) from None
        raise DatasetError(
            f"{src}: not in the Criteo TSV format in lines {first_line}.. "
            f"(rows counted from there): {exc}"
        ) from None


def _convert_chunk(table: pa.Table, rows: tuple[int, ...], first_line: int, src: Path):
    """Labels, dense features and table rows of one parsed chunk; errors name the line."""
    labels = table.column("label").to_numpy()
    bad_label = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))
    if bad_label.size:
        k = int(bad_label[0])
        raise DatasetError(
            f"{src}: line {first_line + k}: label must be 0 or 1, got {float(labels[k])}"
        )
    dense = log_transform(np.column_stack([table.column(c).to_numpy() for c in _DENSE_COLS]))
    table_rows = np.empty((table.num_rows, NUM_CATEGORICAL), dtype=np.int64)
    for t, col in enumerate(_CAT_COLS):
        arr = table.column(col).combine_chunks()
        hashed, bad = _hash_binary_array(arr, rows[t])
        if bad < 0:
            table_rows[:, t] = hashed
        else:
            value = arr[bad].as_py().decode("latin-1")
            raise DatasetError(
                f"{src}: line {first_line + bad}: field {col}: value {value!r} is not a "
                f"hexadecimal of at most {_MAX_HEX_DIGITS} digits"
            )
    return labels.astype(np.float32), dense, table_rows


def preprocess_criteo(
    src: str | Path,
    out_dir: str | Path,
    config: ModelConfig | str | None = None,
    batch_size: int = 2048,
    kind: str = "kaggle",
    max_rows: int | None = None,
    limit: int | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Convert a Criteo TSV file (optionally ``.gz``) into a dataset directory; returns it.

    ``config`` defaults to the one named by ``kind``; ``max_rows`` overrides its row cap
    (the hashing range); ``limit`` reads only the first ``limit`` samples.
    """
    src = Path(src)
    if not src.is_file():
        raise MissingFileError(f"{src}: Criteo source file not found")
    config = _resolve_config(config, kind, max_rows)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    lengths = np.ones((NUM_CATEGORICAL, batch_size), dtype=np.int32)
    writer = DatasetWriter(out_dir, config, batch_size, labels=True, overwrite=overwrite)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_rows = 0
    samples = 0
    try:
        bar = tqdm(
            total=limit,
            desc=f"criteo {src.name}",
            unit="line",
            unit_scale=True,
            disable=(not _is_tty()) if progress is None else not progress,
        )
        with bar:
            for first_line, chunk in _read_chunks(src, limit):
                table = _parse_chunk(chunk, first_line, src)
                pending.append(_convert_chunk(table, config.rows, first_line, src))
                pending_rows += table.num_rows
                samples += table.num_rows
                bar.update(table.num_rows)
                if pending_rows >= batch_size:
                    pending, pending_rows = _flush(writer, pending, batch_size, lengths)
        params = {
            "kind": kind,
            "source_file": src.name,
            "samples_read": samples,
            "dropped_samples": pending_rows,
            "limit": limit,
            "dense": "log(max(x, 0) + 1), missing -> 0",
            "categorical": "int(hex, 16) mod rows[t], missing -> 0",
            "pooling": 1,
        }
        if writer.num_batches == 0:
            raise DatasetError(f"{src}: {samples} samples are fewer than one batch of {batch_size}")
        return writer.finish(f"criteo-{kind}", None, params)
    except BaseException:
        writer.abort()
        raise


def _flush(writer: DatasetWriter, pending, batch_size: int, lengths: np.ndarray):
    labels, dense, rows = (np.concatenate(parts) for parts in zip(*pending, strict=True))
    full = len(labels) // batch_size
    for b in range(full):
        s = slice(b * batch_size, (b + 1) * batch_size)
        writer.add(dense[s], lengths, np.ascontiguousarray(rows[s].T).reshape(-1), labels[s])
    rest = slice(full * batch_size, None)
    left = [(labels[rest], dense[rest], rows[rest])] if len(labels[rest]) else []
    return left, len(labels) - full * batch_size


# -- sample data ----------------------------------------------------------------------------


def write_criteo_sample(path: str | Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` random lines in the Criteo TSV format (gzip if ``path`` ends in .gz).

    Exercises what real files contain: empty fields, negative counts (feature I2), large
    counts, repeated and missing categorical values. Labels are 0/1 with about 25% clicks.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.25).astype(int)
    counts = np.floor(rng.lognormal(1.0, 2.0, size=(rows, NUM_DENSE))).astype(np.int64)
    counts[:, 1] -= rng.integers(0, 3, size=rows) * (rng.random(rows) < 0.3)
    dense_missing = rng.random((rows, NUM_DENSE)) < 0.1
    vocab = rng.integers(0, 2**32, size=(NUM_CATEGORICAL, 64), dtype=np.uint64)
    picks = rng.zipf(1.3, size=(rows, NUM_CATEGORICAL)) % 64
    cat_missing = rng.random((rows, NUM_CATEGORICAL)) < 0.1
    hex_vocab = np.array([[f"{int(v):08x}" for v in row] for row in vocab])
    table = np.empty((rows, 1 + NUM_DENSE + NUM_CATEGORICAL), dtype=object)
    table[:, 0] = labels.astype(str)
    table[:, 1 : 1 + NUM_DENSE] = np.where(dense_missing, "", counts.astype(str))
    cats = hex_vocab[np.arange(NUM_CATEGORICAL), picks]
    table[:, 1 + NUM_DENSE :] = np.where(cat_missing, "", cats)
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wt", newline="\n") as f:
        f.writelines("\t".join(fields) + "\n" for fields in table.tolist())
    return path


# -- download step --------------------------------------------------------------------------


class SourceUnavailableError(MissingFileError):
    """A Criteo source file that is absent or cannot be fetched (no network, wrong URL)."""


def _open_source(src: str) -> tuple[IO[bytes], int | None, str]:
    if "://" in src:
        try:
            response = urllib.request.urlopen(src, timeout=60)
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, bad URLs
            raise SourceUnavailableError(f"{src}: cannot be fetched ({exc})") from None
        size = response.headers.get("Content-Length")
        name = Path(urllib.request.url2pathname(src.split("://", 1)[1].split("?")[0])).name
        return response, int(size) if size else None, name
    path = Path(src)
    if not path.is_file():
        raise SourceUnavailableError(f"{path}: source file not found")
    return open(path, "rb"), path.stat().st_size, path.name


def _copy_hashed(source: IO[bytes], path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _sha256_of(
    stream: IO[bytes],
    size: int | None,
    desc: str,
    progress: bool | None,
    copy_to: IO[bytes] | None = None,
) -> str:
    """The hex sha256 of what ``stream`` yields to its end (copied to ``copy_to`` if
    given), with a progress bar on a terminal unless ``progress`` says otherwise."""
    digest = hashlib.sha256()
    disable = (not _is_tty()) if progress is None else not progress
    with tqdm(total=size, desc=desc, unit="B", unit_scale=True, disable=disable) as bar:
        while block := stream.read(1 << 22):
            digest.update(block)
            if copy_to is not None:
                copy_to.write(block)
            bar.update(len(block))
    return digest.hexdigest()


def fetch(
    url_or_path: str | Path,
    dest: str | Path,
    sha256: str | None = None,
    *,
    member: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Copy or download ``url_or_path`` to ``dest``, verify it, unpack it; returns ``dest``.

    ``sha256`` is checked against the bytes as fetched (the archive, before unpacking); a
    mismatch raises ``DatasetError`` and leaves nothing at ``dest``. A ``.gz`` source is
    decompressed unless ``dest`` itself ends in ``.gz``; ``member`` extracts one file from a
    tar archive (compressed or not). Writes go to ``<dest>.partial`` first, so an
    interrupted fetch never leaves a file that looks complete. Next to ``dest`` goes
    ``<dest>.fetch.json``, the download's record: source, member, the sha256 of the bytes
    fetched and of ``dest`` itself, and its size.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = dest.with_name(dest.name + ".download")
    partial = dest.with_name(dest.name + ".partial")
    sidecar = dest.with_name(dest.name + FETCH_RECORD_SUFFIX)
    sidecar_tmp = sidecar.with_name(sidecar.name + ".partial")
    stream, size, name = _open_source(str(url_or_path))
    try:
        with stream, open(raw, "wb") as out:
            actual = _sha256_of(stream, size, f"fetch {name}", progress, copy_to=out)
        if sha256 is not None and actual != sha256.lower():
            raise DatasetError(
                f"{url_or_path}: sha256 {actual} does not match the expected {sha256}"
            )
        if member is not None:
            with tarfile.open(raw, "r:*") as tar:
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise MissingFileError(f"{url_or_path}: no member {member!r}") from None
                source = tar.extractfile(info)
                if source is None:
                    raise DatasetError(f"{url_or_path}: member {member!r} is not a file")
                with source:
                    dest_sha = _copy_hashed(source, partial)
            raw.unlink()
        elif name.endswith(".gz") and dest.suffix != ".gz":
            with gzip.open(raw, "rb") as source:
                dest_sha = _copy_hashed(source, partial)
            raw.unlink()
        else:
            raw.rename(partial)
            dest_sha = actual
        record = {
            "source": str(url_or_path),
            "member": member,
            "fetched_sha256": actual,
            "sha256": dest_sha,
            "bytes": partial.stat().st_size,
        }
        sidecar_tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        partial.rename(dest)
        sidecar_tmp.rename(sidecar)
        return dest
    finally:
        for leftover in (raw, partial, sidecar_tmp):
            leftover.unlink(missing_ok=True)


# -- a verified local source, hashed once -------------------------------------------------


def _is_url(source: str) -> bool:
    return "://" in source


def _file_state(path: Path) -> dict:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _trusted(record: dict, source: str, sha256: str, member: str | None) -> Path | None:
    """The local file of a record that still describes ``source``, else None."""
    if (
        record.get("source") != source
        or record.get("member") != member
        or record.get("expected_sha256") != sha256
    ):
        return None
    local = Path(record.get("path", ""))
    if not local.is_file() or _file_state(local) != {
        "bytes": record.get("bytes"),
        "mtime_ns": record.get("mtime_ns"),
    }:
        return None
    return local


def _unavailable(source: str, kind: str, why: str) -> SourceUnavailableError:
    where = CRITEO_SOURCES.get(kind, "the Criteo download pages")
    return SourceUnavailableError(
        f"{source}: {why}. This workflow reads the real Criteo data, which it cannot "
        f"download on its own here. Get {where}; then set the source to the local file "
        "(or a URL this machine can reach) and sha256 to its checksum."
    )


def prepare_source(
    source: str | Path,
    sha256: str,
    record: str | Path,
    *,
    fetch_to: str | Path | None = None,
    member: str | None = None,
    kind: str = "kaggle",
    progress: bool | None = None,
) -> Path:
    """A local, verified copy of a Criteo source; returns the file to preprocess.

    ``source`` is a local path or a URL; ``sha256`` the expected checksum of its bytes (of
    the archive when ``member`` names a file inside a tar archive). A plain local file is
    read where it is; a URL or an archive is fetched (``fetch``) to ``fetch_to``. The outcome
    goes to ``record`` (JSON: source, member, expected and verified sha256, the local path,
    its size and modification time). A record that still matches the source, the checksum
    and the local file's size and modification time is trusted: no second hash.

    Raises ``SourceUnavailableError`` (absent file, unreachable URL; the message says where
    the published files are) and ``DatasetError`` for a checksum that does not match.
    """
    source, record = str(source), Path(record)
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    sha256 = sha256.lower()
    if record.is_file():
        try:
            local = _trusted(json.loads(record.read_text()), source, sha256, member)
        except (ValueError, TypeError):
            local = None
        if local is not None:
            return local
    if not _is_url(source) and not Path(source).is_file():
        raise _unavailable(source, kind, "the file is not there")
    if _is_url(source) or member is not None:
        if fetch_to is None:
            raise ValueError(f"{source}: a URL or an archive member needs fetch_to")
        try:
            local = fetch(source, fetch_to, sha256=sha256, member=member, progress=progress)
        except SourceUnavailableError as exc:
            raise _unavailable(source, kind, str(exc).removeprefix(f"{source}: ")) from None
        local = local.resolve()
    else:
        local = Path(source).resolve()
        with open(local, "rb") as f:
            actual = _sha256_of(f, local.stat().st_size, f"sha256 {local.name}", progress)
        if actual != sha256:
            raise DatasetError(
                f"{source}: sha256 {actual} does not match the expected "
                f"{sha256}: a different or damaged file (the check reads the whole file)"
            )
    entry = {
        "source": source,
        "member": member,
        "expected_sha256": sha256,
        "verified": True,
        "path": str(local),
        **_file_state(local),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(record.name + ".partial")
    tmp.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    tmp.rename(record)
    return local
