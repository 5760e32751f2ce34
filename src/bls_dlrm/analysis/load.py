"""Loading a sweep's tidy tables (``results/tables/*.parquet``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

from bls_dlrm.paths import project_path

TABLE_NAMES = ("runs", "per_iteration", "iterations")


#: Tables of the serving sweep (``bls-dlrm serve-tables``).
SERVING_TABLE_NAMES = ("serving", "capacity")


def load_table(
    tables_dir: str | os.PathLike[str], name: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """One table of a sweep (``runs``, ``per_iteration``, ``iterations``; of the serving
    sweep, ``serving`` and ``capacity``).

    ``columns`` limits what is read (the iterations table can be large); names that the
    table lacks are skipped rather than failing, so notebooks survive older tables.
    """
    known = TABLE_NAMES + SERVING_TABLE_NAMES
    if name not in known:
        raise ValueError(f"unknown table {name!r}; expected one of {known}")
    path = project_path(tables_dir) / f"{name}.parquet"
    if not path.is_file():
        tool = "serve-tables" if name in SERVING_TABLE_NAMES else "tables"
        raise FileNotFoundError(f"{path}: no such table (build it with `bls-dlrm {tool}`)")
    if columns is not None:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        columns = [c for c in dict.fromkeys(columns) if c in present]
    return pd.read_parquet(path, columns=columns)


def load_tables(
    tables_dir: str | os.PathLike[str], names: Iterable[str] = TABLE_NAMES
) -> dict[str, pd.DataFrame]:
    """Several tables by name: ``{"runs": df, ...}``."""
    return {name: load_table(tables_dir, name) for name in names}
