"""Protocol loading: good files, each kind of bad file, canonical hashing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from audit.protocol import ProtocolError, load_protocol, protocol_from_dict, protocol_sha256

REPO = Path(__file__).resolve().parents[2]


def demo_dict() -> dict:
    """The demo protocol as plain data (fresh copy each call)."""
    return yaml.safe_load((REPO / "protocols" / "demo.yaml").read_text())


def with_change(path: str, value) -> dict:
    """The demo protocol with one dotted path set to ``value`` (``None`` key removal uses ``...``)."""
    data = copy.deepcopy(demo_dict())
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[keys[-1]]
    elif isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path", sorted((REPO / "protocols").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_protocol_loads(path):
    protocol = load_protocol(path)
    assert protocol.name and len(protocol.sha256) == 64


def test_demo_protocol_values_and_defaults():
    protocol = load_protocol(REPO / "protocols" / "demo.yaml")
    assert protocol.statistics.multiplicity == "holm"
    assert protocol.subgroups.intersections == (("race", "sex"),)
    assert protocol.metrics.nsd_tolerances_mm == (2.0,)
    assert protocol.report.worst_cases_per_group == 3  # default filled


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("statistics.multiplicty", "holm", r"statistics\.multiplicty: unknown key; allowed keys at statistics are \[.*'multiplicity'"),
        ("statistics.multiplicity", "sidak", r"statistics\.multiplicity: allowed values are \['holm', 'fdr_bh', 'bonferroni', 'none'\]; found 'sidak'"),
        ("statistics.bootstrap_iterations", "many", r"statistics\.bootstrap_iterations: expected an integer; found 'many'"),
        ("statistics.bootstrap_iterations", 10, r"statistics\.bootstrap_iterations: must be at least 100; found 10"),
        ("statistics.confidence_level", 95, r"statistics\.confidence_level: must be in \(0\.5, 1\); found 95"),
        ("name", ..., r"name: required key is missing"),
        ("structures", ["vertebral_body", "disk"], r"structures\[1\]: structure: unknown name 'disk'"),
        ("acceptance.0.metric", "hd99", r"acceptance\[0\]\.metric: must be one of the protocol's metrics"),
        ("acceptance.2.scope", "overall", r"acceptance\[2\]\.scope: a gap estimate needs a subgroup axis"),
        ("acceptance.1.operator", "=>", r"acceptance\[1\]\.operator: allowed values are \['>=', '<='\]; found '=>'"),
        ("subgroups.age_bands", [60, 40], r"subgroups\.age_bands: need at least two strictly increasing edges"),
        ("subgroups.intersections", [["race"]], r"subgroups\.intersections\[0\]: an intersection needs two or more"),
        ("metrics.per_level", "yes", r"metrics\.per_level: expected true or false; found 'yes'"),
        ("model.kind", ..., r"model\.kind: required key is missing"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 and "\\" not in v else None,
)
def test_bad_protocols_name_field_allowed_and_found(path, value, message):
    with pytest.raises(ProtocolError, match=message):
        protocol_from_dict(with_change(path, value))


def test_invalid_yaml_and_non_mapping_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ProtocolError, match="expected a mapping at the top level"):
        load_protocol(bad)
    with pytest.raises(ProtocolError, match="cannot be read"):
        load_protocol(tmp_path / "missing.yaml")


def test_yaml_python_tags_are_rejected(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(evil)


def test_hash_is_canonical_key_order_and_defaults_do_not_matter():
    data = demo_dict()
    reordered = dict(reversed(list(data.items())))
    explicit = copy.deepcopy(data)
    explicit["report"]["worst_cases_per_group"] = 3  # equal to the default
    h = protocol_sha256(protocol_from_dict(data))
    assert protocol_sha256(protocol_from_dict(reordered)) == h
    assert protocol_sha256(protocol_from_dict(explicit)) == h
    changed = with_change("statistics.seed", 8)
    assert protocol_sha256(protocol_from_dict(changed)) != h


def test_gallery_axes_must_be_site_or_subgroup_columns():
    assert protocol_from_dict(with_change("report.gallery_axes", ["site", "vendor"])).report.gallery_axes == ("site", "vendor")
    with pytest.raises(ProtocolError, match=r"report\.gallery_axes\[1\]: allowed values are \['site', .*found 'scanner'"):
        protocol_from_dict(with_change("report.gallery_axes", ["site", "scanner"]))


def test_gap_test_and_permutation_iterations_are_validated():
    chosen = protocol_from_dict(with_change("statistics.gap_test", "permutation")).statistics
    assert chosen.gap_test == "permutation" and chosen.permutation_iterations == 10_000
    with pytest.raises(ProtocolError, match=r"statistics\.gap_test: allowed values are \['auto', 'permutation'\]"):
        protocol_from_dict(with_change("statistics.gap_test", "exact"))
    with pytest.raises(ProtocolError, match=r"statistics\.permutation_iterations: must be at least 1000; found 10"):
        protocol_from_dict(with_change("statistics.permutation_iterations", 10))


def test_failure_interval_choice_is_validated():
    assert protocol_from_dict(with_change("statistics.failure_interval", "clopper_pearson")).statistics.failure_interval == "clopper_pearson"
    with pytest.raises(ProtocolError, match=r"statistics\.failure_interval: allowed values are \['wilson', 'clopper_pearson'\]"):
        protocol_from_dict(with_change("statistics.failure_interval", "exact"))
