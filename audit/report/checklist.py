"""Reporting checklist: TRIPOD+AI (Collins et al., BMJ 2024) and CLAIM 2024 (Tejani et al., Radiol AI 2024) items
relevant to an external validation, each mapped to the report section that answers it, or to "not provided in
the protocol" when the run folder holds nothing to answer it with.

Items are paraphrased and numbered as in the published checklists; only items a segmentation-model audit can
answer from its protocol, model card and results are listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CHECKLIST", "NOT_PROVIDED", "ChecklistItem", "checklist_rows"]

NOT_PROVIDED = "not provided in the protocol"


@dataclasses.dataclass(frozen=True)
class ChecklistItem:
    """One checklist item: ``source`` (TRIPOD+AI or CLAIM), item number, topic, the answering section id and a
    predicate on results.json that says whether the run holds the answer (None: always answered)."""

    source: str
    item: str
    topic: str
    section: str
    answered: Callable[[Mapping[str, Any]], bool] | None = None


def _study(key: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda r: bool((r.get("study") or {}).get(key))


def _training(r: Mapping[str, Any]) -> bool:
    return bool(((r.get("study") or {}).get("overlap") or {}).get("training_sites_known"))


def _demographics(r: Mapping[str, Any]) -> bool:
    return any(row.get("axis") in ("sex", "race", "age_band") for row in r["cohort"]["table1"])


CHECKLIST: tuple[ChecklistItem, ...] = (
    ChecklistItem("TRIPOD+AI", "3c", "intended use and users of the model", "study", _study("intended_use")),
    ChecklistItem("TRIPOD+AI", "5a", "data sources, study dates and settings", "study", _study("registered")),
    ChecklistItem("TRIPOD+AI", "5b", "participants: eligibility, sites, how many found, excluded, analysed", "flow"),
    ChecklistItem("TRIPOD+AI", "6a", "outcome (reference standard) and how it was assessed", "study", _study("reference_standard")),
    ChecklistItem("TRIPOD+AI", "8", "sample size / precision (minimum group size, minimum detectable difference)", "methods"),
    ChecklistItem("TRIPOD+AI", "9", "missing data: how handled (Unknown groups, failed cases)", "quality"),
    ChecklistItem("TRIPOD+AI", "12c", "differences between development and validation data (sites seen in training)", "study", _training),
    ChecklistItem("TRIPOD+AI", "12e", "performance measures with confidence intervals", "overall"),
    ChecklistItem("TRIPOD+AI", "14", "fairness: performance across subgroups (sex, age, race, site, scanner)", "subgroups", _demographics),
    ChecklistItem("TRIPOD+AI", "18", "protocol and registration (date, where)", "study", _study("registered")),
    ChecklistItem("TRIPOD+AI", "20a", "participant flow with numbers at each stage", "flow"),
    ChecklistItem("TRIPOD+AI", "20b", "characteristics of the validation data (Table 1)", "cohort"),
    ChecklistItem("TRIPOD+AI", "23a", "model performance with intervals, overall and by subgroup", "overall"),
    ChecklistItem("TRIPOD+AI", "27a", "limitations (small groups, missing demographics, synthetic data)", "limitations"),
    ChecklistItem("CLAIM", "7", "data sources and sites", "study"),
    ChecklistItem("CLAIM", "8", "eligibility and exclusion of cases", "flow"),
    ChecklistItem("CLAIM", "14", "reference standard: definition and rationale", "study", _study("reference_standard")),
    ChecklistItem("CLAIM", "22", "model: description, version and identity (sha256)", "provenance"),
    ChecklistItem("CLAIM", "26", "training data of the model, overlap with the test data", "study", _training),
    ChecklistItem("CLAIM", "28", "metrics of model performance, definitions", "methods"),
    ChecklistItem("CLAIM", "29", "statistical methods: intervals, tests, multiplicity", "methods"),
    ChecklistItem("CLAIM", "31", "robustness: performance by site, vendor and field strength", "subgroups"),
    ChecklistItem("CLAIM", "32", "external validation on data from other sites", "study", _training),
    ChecklistItem("CLAIM", "34", "case flow diagram", "flow"),
    ChecklistItem("CLAIM", "36", "failure analysis of incorrectly segmented cases (worst cases)", "gallery"),
    ChecklistItem("CLAIM", "39", "limitations and generalizability", "limitations"),
    ChecklistItem("CLAIM", "41", "where the protocol can be accessed", "study", _study("registry")),
)


def checklist_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``source, item, topic, section`` (a section id, or None when not provided in the protocol)."""
    return [
        {"source": c.source, "item": c.item, "topic": c.topic, "section": c.section if c.answered is None or c.answered(results) else None}
        for c in CHECKLIST
    ]
