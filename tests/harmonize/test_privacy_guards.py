"""Privacy guards: keyed pseudonyms (checked against the stdlib hmac) and the identifying-column deny-list."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from audit.harmonize.privacy import PrivacyError, assert_no_identifiers, identifying_columns, pseudonymize


def test_pseudonymize_is_keyed_hmac_sha256(monkeypatch):
    expected = hmac.new(b"k1", b"site-A/12345", hashlib.sha256).hexdigest()[:20]
    assert pseudonymize("12345", key="k1", namespace="site-A") == expected
    assert pseudonymize("12345", key="k2", namespace="site-A") != expected
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "k1")
    assert pseudonymize("12345", namespace="site-A") == expected
    monkeypatch.delenv("SPINE_AUDIT_PSEUDONYM_KEY")
    with pytest.raises(PrivacyError, match="SPINE_AUDIT_PSEUDONYM_KEY"):
        pseudonymize("12345")


def test_identifying_columns_are_refused():
    columns = ["PatientName", "birth_date", "MRN", "accession_number", "manufacturer_model_name", "site_id", "split", "session"]
    assert identifying_columns(columns) == ["PatientName", "birth_date", "MRN", "accession_number"]
    with pytest.raises(PrivacyError, match="PatientName"):
        assert_no_identifiers(columns)
    assert_no_identifiers(["split", "session"])
