"""The report stage: self-contained HTML report, machine-readable tables and the evidence package."""

from __future__ import annotations

from audit.report.formatting import format_value
from audit.report.package import build_package
from audit.report.pdf import print_pdf
from audit.report.redact import redact_paths
from audit.report.render import render_report
from audit.report.schema import validate_results
from audit.report.tables import write_tables
from audit.report.verify import VerifyResult, verify_package
from audit.results import RESULTS_SCHEMA_VERSION

__all__ = [
    "RESULTS_SCHEMA_VERSION",
    "VerifyResult",
    "build_package",
    "format_value",
    "print_pdf",
    "redact_paths",
    "render_report",
    "validate_results",
    "verify_package",
    "write_tables",
]
