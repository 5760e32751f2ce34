"""Criteo preprocessing and the fetch step, on sample files written by the package."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import tarfile

import numpy as np
import pytest

from bls_dlrm.data import (
    BatchStore,
    DatasetError,
    MissingFileError,
    fetch,
    hash_categorical,
    log_transform,
    preprocess_criteo,
    write_criteo_sample,
)
from bls_dlrm.model import get_config

CONFIG = get_config("kaggle", max_rows=1000)


def expected_from_text(path, rows):
    """An independent, line-by-line reading of the Criteo format."""
    labels, dense, cats = [], [], []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            assert len(fields) == 40
            labels.append(float(fields[0]))
            dense.append([math.log1p(max(int(v), 0)) if v else 0.0 for v in fields[1:14]])
            cats.append([int(v or "0", 16) % rows[t] for t, v in enumerate(fields[14:])])
    return np.array(labels), np.array(dense), np.array(cats)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_criteo_sample(tmp_path_factory.mktemp("criteo") / "day.txt", 300, seed=2)


def test_sample_has_what_real_files_have(sample):
    text = sample.read_text().splitlines()
    fields = [line.split("\t") for line in text]
    assert len(text) == 300 and all(len(f) == 40 for f in fields)
    assert any(f[2].startswith("-") for f in fields)  # negative counts
    assert any(f[5] == "" for f in fields) and any(f[20] == "" for f in fields)


def test_preprocess_values(sample, tmp_path):
    out = preprocess_criteo(sample, tmp_path / "ds", CONFIG, batch_size=64)
    store = BatchStore(out, expect_config=CONFIG)
    assert len(store) == 4 and store.has_labels
    params = store.manifest["params"]
    assert params["dropped_samples"] == 300 - 4 * 64 and params["samples_read"] == 300
    assert store.manifest["source"] == "criteo-kaggle"
    labels, dense, cats = expected_from_text(sample, CONFIG.rows)
    for i in range(4):
        batch = store[i]
        s = slice(i * 64, (i + 1) * 64)
        np.testing.assert_array_equal(batch.labels.numpy(), labels[s])
        np.testing.assert_allclose(batch.dense.numpy(), dense[s], rtol=1e-6, atol=0)
        assert batch.dense.min() >= 0
        assert (batch.sparse.lengths() == 1).all()
        for t in range(26):
            idx, _ = batch.sparse.table(t)
            np.testing.assert_array_equal(idx.numpy(), cats[s, t])
            assert idx.min() >= 0 and idx.max() < CONFIG.rows[t]


def test_gzip_and_limit(sample, tmp_path):
    gz = tmp_path / "day.txt.gz"
    gz.write_bytes(gzip.compress(sample.read_bytes()))
    plain = preprocess_criteo(sample, tmp_path / "a", CONFIG, batch_size=50)
    packed = preprocess_criteo(gz, tmp_path / "b", CONFIG, batch_size=50)
    files = [json.loads((p / "manifest.json").read_text())["files"] for p in (plain, packed)]
    assert files[0] == files[1]
    limited = BatchStore(preprocess_criteo(sample, tmp_path / "c", CONFIG, 50, limit=120))
    assert len(limited) == 2 and limited.manifest["params"]["samples_read"] == 120
    capped = get_config("kaggle", max_rows=10)
    small = BatchStore(preprocess_criteo(sample, tmp_path / "d", "kaggle", 50, max_rows=10))
    assert small.table_rows == list(capped.rows)
    assert int(small[0].sparse.indices.max()) < 10


def test_small_chunks_and_no_final_newline(sample, tmp_path, monkeypatch):
    """Chunk boundaries (and limits inside a chunk) must not change the result."""
    whole = preprocess_criteo(sample, tmp_path / "whole", CONFIG, batch_size=32, limit=250)
    (tmp_path / "cut.txt").write_bytes(sample.read_bytes().rstrip(b"\n"))
    monkeypatch.setattr("bls_dlrm.data.criteo._CHUNK_BYTES", 999)
    small = preprocess_criteo(sample, tmp_path / "small", CONFIG, batch_size=32, limit=250)
    files = [json.loads((p / "manifest.json").read_text())["files"] for p in (whole, small)]
    assert files[0] == files[1]
    cut = BatchStore(preprocess_criteo(tmp_path / "cut.txt", tmp_path / "c", CONFIG, 30))
    assert len(cut) == 10 and cut.manifest["params"]["samples_read"] == 300


def test_transforms():
    x = np.array([[np.nan, -2, 0, 1, 1e6]])
    np.testing.assert_allclose(log_transform(x), [[0, 0, 0, math.log(2), math.log1p(1e6)]])
    values = np.array(["", "0", "ff", "FF", "1adce39d", "ffffffffffffffff"], dtype=object)
    got = hash_categorical(values, 1000)
    assert got.tolist() == [0, 0, 255, 255, 0x1ADCE39D % 1000, (2**64 - 1) % 1000]
    with pytest.raises(ValueError, match="'zz' at position 1"):
        hash_categorical(np.array(["1", "zz"]), 10)
    with pytest.raises(ValueError, match="not a hexadecimal"):
        hash_categorical(np.array(["1" * 17]), 10)


def test_bad_lines_are_named(sample, tmp_path):
    lines = sample.read_text().splitlines()
    bad = list(lines)
    fields = bad[6].split("\t")
    fields[20] = "xyz!"
    bad[6] = "\t".join(fields)
    (tmp_path / "bad.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(DatasetError, match=r"line 7: field C7: value 'xyz!'"):
        preprocess_criteo(tmp_path / "bad.txt", tmp_path / "o", CONFIG, 16)
    fields = lines[9].split("\t")
    fields[0], fields[3] = "2", "many"
    label = [*lines[:9], "\t".join(fields)]
    (tmp_path / "label.txt").write_text("\n".join(label) + "\n")
    with pytest.raises(DatasetError, match="Criteo TSV"):  # "many" is no count
        preprocess_criteo(tmp_path / "label.txt", tmp_path / "o", CONFIG, 16)
    fields[3] = "5"
    (tmp_path / "label.txt").write_text("\n".join([*lines[:9], "\t".join(fields)]) + "\n")
    with pytest.raises(DatasetError, match="line 10: label must be 0 or 1"):
        preprocess_criteo(tmp_path / "label.txt", tmp_path / "o", CONFIG, 4)
    short = list(lines)
    short[3] = "\t".join(short[3].split("\t")[:39])
    (tmp_path / "short.txt").write_text("\n".join(short) + "\n")
    with pytest.raises(DatasetError, match=r"line 4: expected 40"):
        preprocess_criteo(tmp_path / "short.txt", tmp_path / "o", CONFIG, 16)
    long = list(lines)
    long[2] += "\textra"
    (tmp_path / "long.txt").write_text("\n".join(long) + "\n")
    with pytest.raises(DatasetError, match="line 3: expected 40 tab-separated fields, found 41"):
        preprocess_criteo(tmp_path / "long.txt", tmp_path / "o", CONFIG, 16)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
    with pytest.raises(ValueError, match="26"):
        preprocess_criteo(sample, tmp_path / "o", get_config("tiny"), 16)
    with pytest.raises(MissingFileError):
        preprocess_criteo(tmp_path / "none.txt", tmp_path / "o", CONFIG, 16)
    with pytest.raises(DatasetError, match="fewer than one batch"):
        preprocess_criteo(sample, tmp_path / "o", CONFIG, 1000)


def test_fetch_copies_verifies_and_unpacks(sample, tmp_path):
    data = sample.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    copied = fetch(sample, tmp_path / "a" / "train.txt", sha256=sha)
    assert copied.read_bytes() == data

    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(data))
    gz_sha = hashlib.sha256(gz.read_bytes()).hexdigest()
    assert fetch(gz.as_uri(), tmp_path / "b.txt", sha256=gz_sha).read_bytes() == data
    record = json.loads((tmp_path / "b.txt.fetch.json").read_text())
    assert record["fetched_sha256"] == gz_sha and record["sha256"] == sha
    assert record["bytes"] == len(data) and record["source"] == gz.as_uri()
    assert fetch(gz, tmp_path / "c.txt.gz").read_bytes() == gz.read_bytes()  # kept packed

    with pytest.raises(DatasetError, match="does not match"):
        fetch(sample, tmp_path / "d.txt", sha256="0" * 64)
    assert not list(tmp_path.glob("d.txt*"))  # neither data nor record

    archive = tmp_path / "dac.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("train.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert fetch(archive, tmp_path / "e.txt", member="train.txt").read_bytes() == data
    with pytest.raises(MissingFileError, match="no member"):
        fetch(archive, tmp_path / "f.txt", member="test.txt")
    with pytest.raises(MissingFileError):
        fetch(tmp_path / "missing.txt", tmp_path / "g.txt")
