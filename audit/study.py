"""Study context of an audit: the model card's training data against the audited data.

An external validation is only external where the model never saw the data. This module reads the model
card (the packaged card of a ``builtin:`` model merged with the protocol's ``model:`` section, which may
carry the same documentation keys: ``intended_use``, ``training: {sites, case_ids, patient_ids, ...}``),
checks the training sites, case ids and patient ids against the audited manifest, and labels every audited
site ``external`` or ``training site`` (the manifest column :data:`SITE_ROLE`), so the statistics can
analyse the truly external sites separately.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["EXTERNAL", "SITE_ROLE", "TRAINING_SITE", "model_card", "site_roles", "training_overlap", "with_site_role"]

#: Manifest column added when the model card names its training sites.
SITE_ROLE = "site_role"
EXTERNAL = "external"
TRAINING_SITE = "training site"

#: Documentation keys of a model card shown in the report (all optional).
_CARD_FIELDS = ("description", "intended_use", "limitations", "license")
#: Keys of the card's ``training`` mapping shown in the report (all optional).
_TRAINING_FIELDS = ("sites", "dates", "n_cases", "n_patients", "data", "date")


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise ValueError(f"model.training.{field}: expected a list of strings; found {value!r}")
    return [str(v) for v in value]


def model_card(model_section: Mapping[str, Any]) -> dict[str, Any]:
    """The documentation part of a model card: description, intended use, limitations, licence, training data.

    Parameters
    ----------
    model_section : Mapping
        The protocol's ``model:`` section. For ``path: builtin:<name>`` the packaged card is read first and the
        section's keys override it (the same merge as :func:`audit.inference.model_spec_from_dict`).

    Returns
    -------
    dict
        ``description``, ``intended_use``, ``limitations``, ``license`` (strings or None) and ``training``:
        ``sites``, ``case_ids``, ``patient_ids`` (lists, empty when not given), ``dates``, ``date``, ``n_cases``,
        ``n_patients``, ``data`` (None when not given).

    Examples
    --------
    >>> card = model_card({"kind": "checkpoint", "path": "m.pt", "training": {"sites": ["A"]}})
    >>> card["training"]["sites"], card["intended_use"]
    (['A'], None)
    """
    from audit.inference.spec import BUILTIN_MODELS, load_model_card

    merged: dict[str, Any] = {}
    path = model_section.get("path")
    if isinstance(path, str) and path.startswith("builtin:") and path.split(":", 1)[1] in BUILTIN_MODELS:
        card_path = BUILTIN_MODELS[path.split(":", 1)[1]]
        if card_path.is_file():
            merged.update(load_model_card(card_path))
    merged.update({k: v for k, v in model_section.items() if v is not None})
    training = merged.get("training") or {}
    if not isinstance(training, Mapping):
        raise ValueError(f"model.training: expected a mapping; found {training!r}")
    out: dict[str, Any] = {k: (str(merged[k]) if merged.get(k) is not None else None) for k in _CARD_FIELDS}
    out["training"] = {
        "sites": _strings(training.get("sites"), "sites"),
        "case_ids": _strings(training.get("case_ids"), "case_ids"),
        "patient_ids": _strings(training.get("patient_ids"), "patient_ids"),
        **{k: training.get(k) for k in _TRAINING_FIELDS if k != "sites"},
    }
    return out


def training_overlap(card: Mapping[str, Any], manifest: pd.DataFrame) -> dict[str, Any]:
    """Which audited sites, cases and patients the model was trained on.

    Parameters
    ----------
    card : Mapping
        :func:`model_card` output.
    manifest : pandas.DataFrame
        The audited manifest (``site``, ``case_id``, ``patient_id``).

    Returns
    -------
    dict
        ``training_sites_known`` (bool: the card names its sites), ``audited_sites``, ``training_sites``,
        ``external_sites`` and ``overlapping_sites`` (sorted lists; with unknown training sites every site is
        listed as ``unverified_sites`` instead of external), ``case_ids_checked`` / ``patient_ids_checked``
        (bool) and ``overlapping_case_ids`` / ``overlapping_patient_ids`` (counts; ids are not copied).

    Examples
    --------
    >>> m = pd.DataFrame({"site": ["A", "D"], "case_id": ["A/1", "D/1"], "patient_id": ["p1", "p2"]})
    >>> o = training_overlap({"training": {"sites": ["A", "B"], "case_ids": [], "patient_ids": []}}, m)
    >>> o["external_sites"], o["overlapping_sites"]
    (['D'], ['A'])
    """
    training = card.get("training") or {}
    sites_declared = list(training.get("sites") or [])
    audited = sorted(str(s) for s in manifest["site"].dropna().unique())
    known = bool(sites_declared)
    overlap = sorted(set(audited) & set(sites_declared))
    case_ids, patient_ids = set(training.get("case_ids") or []), set(training.get("patient_ids") or [])
    return {
        "training_sites_known": known,
        "audited_sites": audited,
        "training_sites": sorted(sites_declared),
        "external_sites": sorted(set(audited) - set(sites_declared)) if known else [],
        "overlapping_sites": overlap,
        "unverified_sites": [] if known else audited,
        "case_ids_checked": bool(case_ids),
        "overlapping_case_ids": int(manifest["case_id"].astype(str).isin(case_ids).sum()) if case_ids else None,
        "patient_ids_checked": bool(patient_ids),
        "overlapping_patient_ids": int(manifest["patient_id"].dropna().astype(str).drop_duplicates().isin(patient_ids).sum()) if patient_ids else None,
    }


def site_roles(manifest: pd.DataFrame, training_sites: Sequence[str]) -> pd.Series:
    """``external`` or ``training site`` for every manifest row (the :data:`SITE_ROLE` column).

    Examples
    --------
    >>> site_roles(pd.DataFrame({"site": ["A", "D"]}), ["A"]).tolist()
    ['training site', 'external']
    """
    seen = set(training_sites)
    return manifest["site"].map(lambda s: TRAINING_SITE if s in seen else EXTERNAL).rename(SITE_ROLE)


def with_site_role(manifest: pd.DataFrame, subgroups: Any, model_section: Mapping[str, Any]) -> tuple[pd.DataFrame, Any]:
    """Add the :data:`SITE_ROLE` column and axis when the audit mixes training sites and external sites.

    Parameters
    ----------
    manifest : pandas.DataFrame
        The manifest (with ``site``).
    subgroups : audit.protocol.SubgroupSettings
        The protocol's subgroup settings.
    model_section : Mapping
        The protocol's ``model:`` section (see :func:`model_card`).

    Returns
    -------
    (pandas.DataFrame, SubgroupSettings)
        Unchanged when the card names no training site or when every audited site has the same role; otherwise the
        manifest with ``site_role`` and the settings with ``site_role`` appended to ``columns`` (an exploratory
        axis: not pre-registered by the protocol).
    """
    import dataclasses

    training = model_card(model_section)["training"]["sites"]
    if not training or SITE_ROLE in subgroups.columns:
        return manifest, subgroups
    roles = site_roles(manifest, training)
    if roles.nunique() < 2:
        return manifest, subgroups
    return manifest.assign(**{SITE_ROLE: roles}), dataclasses.replace(subgroups, columns=(*subgroups.columns, SITE_ROLE))
