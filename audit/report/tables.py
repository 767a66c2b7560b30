"""Machine-readable tables of a run: CSV always, Parquet when pyarrow is installed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["write_tables"]


def write_tables(run_dir: str | Path, tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write each table to ``<run>/tables/<name>.csv`` (and ``.parquet``); return the paths written."""
    folder = Path(run_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        csv = folder / f"{name}.csv"
        table.to_csv(csv, index=False)
        written.append(csv)
        try:
            import pyarrow  # noqa: F401

            parquet = folder / f"{name}.parquet"
            table.astype({c: "string" for c in table.columns if table[c].dtype == object}).to_parquet(parquet, index=False)
            written.append(parquet)
        except ImportError:
            logger.info("pyarrow not installed: %s written as CSV only", name)
    return written
