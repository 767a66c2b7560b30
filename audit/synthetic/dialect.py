"""How a site writes its metadata table: column names, sex words, age format, redaction, missing tokens."""

from __future__ import annotations

import dataclasses
import logging

from audit.sites.nifti_table import DEFAULT_COLUMNS

logger = logging.getLogger(__name__)

__all__ = ["MetadataDialect", "site_columns"]

_AGE_FORMATS = ("dicom", "int", "float")


@dataclasses.dataclass(frozen=True)
class MetadataDialect:
    """How a site writes its metadata table.

    Parameters
    ----------
    columns : tuple of (canonical, column) pairs
        Column name used by the site for each canonical field (``case_id``, ``patient_id``, ``vendor``,
        ``scanner_model``, ``field_strength``, ``age``, ``sex``, ``race``, ``ethnicity``).
    sex_values : tuple of (canonical, written) pairs
        How ``"F"`` and ``"M"`` are written (``"F"``, ``"Female"``, ``"female"``).
    age_format : {"dicom", "int", "float"}
        ``"dicom"`` writes the DICOM age string (``"045Y"``); ``"int"`` whole years; ``"float"`` one decimal.
    redact_over_89 : bool
        Write ages above 89 as ``redacted_token`` (HIPAA safe harbour).
    redacted_token : str
        Token for a redacted age (``">89"``, ``"90+"``).
    missing : str
        How a missing value is written (``""`` for an empty cell, ``"Not Reported"``, ``"Unknown"``).
    missing_rate : float
        Probability that each of age, sex, race, ethnicity is missing from a row (independently).
    """

    columns: tuple[tuple[str, str], ...]
    sex_values: tuple[tuple[str, str], ...] = (("F", "F"), ("M", "M"))
    age_format: str = "int"
    redact_over_89: bool = False
    redacted_token: str = ">89"
    missing: str = ""
    missing_rate: float = 0.03

    def __post_init__(self) -> None:
        if self.age_format not in _AGE_FORMATS:
            raise ValueError(f"MetadataDialect.age_format must be one of {_AGE_FORMATS}; got {self.age_format!r}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"MetadataDialect.missing_rate must be in [0, 1); got {self.missing_rate!r}")
        need = {"case_id", "patient_id", "vendor", "scanner_model", "field_strength", "age", "sex", "race", "ethnicity"}
        have = {k for k, _ in self.columns}
        if need - have:
            raise ValueError(f"MetadataDialect.columns must name {sorted(need)}; missing {sorted(need - have)}")

    @property
    def column_map(self) -> dict[str, str]:
        """Canonical field -> the site's column name (the ``columns`` option of a nifti_table config)."""
        return dict(self.columns)


def site_columns(**overrides: str) -> tuple[tuple[str, str], ...]:
    """Canonical field -> column name pairs: lower-case defaults, ``overrides`` for a site's own names."""
    base = dict(DEFAULT_COLUMNS)  # the nifti_table adapter's defaults: the layout it reads
    base.update(overrides)
    return tuple(base.items())
