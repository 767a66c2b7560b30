"""The protocol's optional `study` section: defaults, the ISO registration date check, and its place in the hash."""

from __future__ import annotations

import pytest

from audit.protocol import ProtocolError, load_protocol, protocol_from_dict, protocol_to_dict


def minimal(**extra) -> dict:
    return {"name": "t", "version": "1", "model": {"kind": "predictions"}, "structures": ["vertebral_body"], "synthetic_cohort": {}, **extra}


def test_study_defaults_are_empty_and_the_demo_fills_them(repo_root):
    assert protocol_to_dict(protocol_from_dict(minimal()))["study"] == {"intended_use": "", "reference_standard": "", "registered": "", "registry": ""}
    demo = load_protocol(repo_root / "protocols" / "demo.yaml").study
    assert demo.registered == "2026-11-24" and demo.intended_use and demo.reference_standard


def test_registration_date_must_be_iso_and_changes_the_hash():
    with pytest.raises(ProtocolError, match=r"study.registered: expected an ISO date YYYY-MM-DD; found '24/11/2026'"):
        protocol_from_dict(minimal(study={"registered": "24/11/2026"}))
    with pytest.raises(ProtocolError, match=r"study.sponsor: unknown key"):
        protocol_from_dict(minimal(study={"sponsor": "x"}))
    a, b = protocol_from_dict(minimal(study={"registered": "2026-11-24"})), protocol_from_dict(minimal(study={"registered": "2026-11-25"}))
    assert a.sha256 != b.sha256
