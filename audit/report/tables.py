"""Machine-readable tables of a run: CSV always, Parquet when pyarrow is installed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

__all__ = ["write_tables"]


def write_tables(run_dir: str | Path, tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write each table to ``<run>/tables/<name>.csv`` (and ``.parquet``) atomically; return the paths written.

    See :meth:`audit.runfolder.RunFolder.write_tables`.
    """
    from audit.runfolder import RunFolder

    return RunFolder(run_dir).write_tables(tables)
