"""Study context of the report: model card, protocol and README agree on the training sites; the overlap check
names the truly external sites and the statistics analyse them separately; participant flow; key findings;
adjusted-model flags; the reporting checklist."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from report_html_helpers import ReportParser

from audit.records import CaseFailure
from audit.report.checklist import CHECKLIST, checklist_rows
from audit.report.flags import adjusted_flags, site_level_axes
from audit.report.render import SECTIONS
from audit.results import participant_flow
from audit.study import model_card, site_roles, training_overlap

TRAINING = {"site-A", "site-B", "site-C"}


def sites_after_trained_on(text: str) -> set[str]:
    """The site names in the clause that follows "model (or U-Net) was trained on" (up to the next ';' or '.')."""
    clauses = re.findall(r"(?:model|U-Net) was trained on([^;]*?)(?:;|\.\s)", " ".join(text.split()))
    assert clauses, text[:200]
    return set(re.findall(r"site-[A-Z]", clauses[0]))


def test_model_card_protocol_and_readme_agree_on_the_training_sites(repo_root):
    from audit.synthetic import training_sites

    card = json.loads((repo_root / "audit" / "models" / "demo_unet.json").read_text())
    protocol = (repo_root / "protocols" / "demo.yaml").read_text()
    readme = (repo_root / "README.md").read_text()
    assert set(card["training"]["sites"]) == {s.name for s in training_sites()} == TRAINING
    assert sites_after_trained_on(protocol) == TRAINING
    assert sites_after_trained_on(readme) == TRAINING
    assert "site-D (Philips 1.5 T) is the only truly external site" in " ".join(protocol.split())
    assert "site-D (Philips 1.5 T) is the only truly external site" in " ".join(readme.split())
    assert model_card({"kind": "checkpoint", "path": "builtin:demo-unet"})["training"]["sites"] == sorted(TRAINING)


def test_overlap_counts_sites_cases_and_patients():
    manifest = pd.DataFrame({"site": ["A", "A", "D", "E"], "case_id": ["A/1", "A/2", "D/1", "E/1"], "patient_id": ["p1", "p1", "p2", "p3"]})
    card = {"training": {"sites": ["A", "B"], "case_ids": ["A/2", "Z/9"], "patient_ids": ["p1", "p3"]}}
    out = training_overlap(card, manifest)
    assert out["external_sites"] == ["D", "E"] and out["overlapping_sites"] == ["A"] and out["training_sites"] == ["A", "B"]
    assert (out["overlapping_case_ids"], out["overlapping_patient_ids"]) == (1, 2)  # A/2; patients p1 and p3 (p1 counted once)
    unknown = training_overlap({"training": {"sites": [], "case_ids": [], "patient_ids": []}}, manifest)
    assert unknown["external_sites"] == [] and unknown["unverified_sites"] == ["A", "D", "E"] and unknown["overlapping_case_ids"] is None
    assert site_roles(manifest, ["A"]).tolist() == ["training site", "training site", "external", "external"]
    with pytest.raises(ValueError, match=r"model.training.sites: expected a list of strings; found 'A'"):
        model_card({"kind": "checkpoint", "path": "m.pt", "training": {"sites": "A"}})


def test_demo_run_names_site_d_external_and_analyses_it_separately(demo_run):
    run = demo_run[0]
    results = json.loads((run / "results.json").read_text())
    overlap = results["study"]["overlap"]
    assert overlap["external_sites"] == ["site-D"] and set(overlap["overlapping_sites"]) == TRAINING
    manifest = pd.read_csv(run / "manifest.csv")
    estimates = [r for r in results["statistics"]["group_estimates"] if r["axis"] == "site_role"]
    external = [r for r in estimates if r["group"] == "external"]
    assert {r["group"] for r in estimates} == {"external", "training site"}
    assert {r["n_cases"] for r in external} == {int((manifest["site"] == "site-D").sum())}
    role_gaps = [g for g in results["statistics"]["gaps"] if g["axis"] == "site_role"]
    assert role_gaps and {g["family"] for g in role_gaps} == {"exploratory"}
    html = " ".join((run / "report.html").read_text().split())
    assert "Truly external: site-D" in html and "<strong>site-D</strong>" in html


def test_participant_flow_counts_each_case_once():
    """Hand-checkable: 6 cases at 2 sites; failures at every stage; a case failing twice counts once (first stage)."""
    manifest = pd.DataFrame({"case_id": ["a/1", "a/2", "a/3", "a/4", "b/1", "b/2"], "site": ["a", "a", "a", "a", "b", "b"]})
    metrics = pd.DataFrame({"case_id": ["a/1", "a/2", "a/3", "a/4", "b/1", "b/2"], "status": ["ok", "failed", "failed", "failed", "missed", "failed"]})
    failures = [CaseFailure("a/2", "adapter", "e", "E", "a"), CaseFailure("a/3", "harmonize", "e", "E", "a"), CaseFailure("a/4", "inference", "e", "E", "a"),
                CaseFailure("b/2", "metrics", "e", "E", "b"), CaseFailure("b/2", "harmonize", "later", "E", "b")]  # fmt: skip
    flow = participant_flow(manifest, metrics, failures)
    assert flow == [
        {"site": "a", "found": 4, "excluded": 2, "failed": 1, "analysed": 1},
        {"site": "b", "found": 2, "excluded": 0, "failed": 1, "analysed": 1},
        {"site": "all", "found": 6, "excluded": 2, "failed": 2, "analysed": 2},
    ]


def test_flow_table_recomputed_from_the_run_folder(tmp_path):
    """The synthetic run's flow rows and their tagged numbers, recounted from manifest.csv, metrics.csv, failures.csv."""
    from report_builders import synthetic_run

    from audit.report import render_report

    run = synthetic_run(tmp_path / "run", n_cases=24, images=1)
    parser = ReportParser()
    parser.feed(render_report(run).read_text(encoding="utf-8"))
    results = json.loads((run / "results.json").read_text())
    manifest, metrics, failures = (pd.read_csv(run / f) for f in ("manifest.csv", "metrics.csv", "failures.csv"))
    analysed = set(metrics.loc[metrics["status"] != "failed", "case_id"])
    stage = dict(zip(failures["case_id"], failures["stage"]))
    for row in results["cohort"]["flow"]:
        cases = manifest if row["site"] == "all" else manifest[manifest["site"] == row["site"]]
        ids = list(cases["case_id"])
        expected = {"found": len(ids), "analysed": sum(c in analysed for c in ids),
                    "excluded": sum(c not in analysed and stage.get(c) in ("adapter", "harmonize") for c in ids)}  # fmt: skip
        expected["failed"] = expected["found"] - expected["analysed"] - expected["excluded"]
        assert {k: row[k] for k in expected} == expected, row
    shown = {(a["data-row"], a["data-field"]): t for a, t in parser.spans if a["data-src"] == "cohort.flow"}
    assert len(shown) == 4 * len(results["cohort"]["flow"])
    assert shown[(str(len(results["cohort"]["flow"]) - 1), "excluded")] == "1"  # the builder's one harmonize failure


def test_key_findings_state_estimate_interval_population_and_direction(demo_run):
    run = demo_run[0]
    results = json.loads((run / "results.json").read_text())
    html = (run / "report.html").read_text()
    block = html[html.index('<ul class="findings">') : html.index("</ul>", html.index('<ul class="findings">'))]
    parser = ReportParser()
    parser.feed(block)
    text = re.sub(r"<[^>]+>", "", block)
    assert "Intervals describe these sites, not a new site." in text
    # the site sentence: a gap written as a positive "lower (worse)" or "higher (better)" (data-scale -1 for a decrease),
    # its interval swapped accordingly; found back in results.json by structure and group
    found = re.search(r"([A-Z][a-z ]+) Dice is ([0-9.]+) (lower|higher) \((worse|better)\) at (site-[A-Z])(?: \(([^)]*)\))? than at (site-[A-Z])"
                      r"(?: \(95% CI (-?[0-9.]+) to (-?[0-9.]+)\)|; not tested)", text)  # fmt: skip
    assert found, text
    structure = found.group(1).lower().replace(" ", "_")
    gap = next(g for g in results["statistics"]["gaps"] if g["axis"] == "site" and g["group"] == found.group(5) and g["structure"] == structure
               and g["metric"] == "dice" and g["comparison"] == "vs_reference")  # fmt: skip
    sign = -1 if gap["difference"] < 0 else 1
    assert (found.group(3), found.group(4)) == (("lower", "worse") if sign < 0 else ("higher", "better"))
    assert found.group(2) == f"{sign * gap['difference']:.3f}" and found.group(7) == gap["reference"]
    if gap["diff_ci_low"] is None:  # a group below the minimum size: no interval, not tested
        assert found.group(8) is None and gap["p_value"] is None
    else:
        low, high = sorted((sign * gap["diff_ci_low"], sign * gap["diff_ci_high"]))
        assert (found.group(8), found.group(9)) == (f"{low:.3f}", f"{high:.3f}")
    if found.group(5) == "site-D":
        assert found.group(6) == "Philips 1.5T"
    assert "Vendor is confounded with site (every site has one vendor" in text
    # age per decade: the per-year slope times 10, tagged with data-scale 10
    decade = [a for a, _ in parser.spans if a.get("data-scale") == "10"]
    assert decade and {a["data-src"] for a in decade} == {"statistics.adjusted"}
    assert "Per decade of age, intervertebral disc Dice changes by" in text


def four_sites_like_the_demo() -> pd.DataFrame:
    """Cases at 4 sites whose vendor (Siemens, GE, Siemens, Philips) and field strength (3T, 3T, 1.5T, 1.5T) are site-level."""
    rows = []
    for site, vendor, field in (("A", "Siemens", "3T"), ("B", "GE", "3T"), ("C", "Siemens", "1.5T"), ("D", "Philips", "1.5T")):
        rows += [{"case_id": f"{site}/{k}", "site": site, "vendor": vendor, "field_strength": field, "sex": "FM"[k % 2]} for k in range(4)]
    return pd.DataFrame(rows)


def test_adjusted_flags_confounded_non_identifiable_not_converged():
    cases = four_sites_like_the_demo()
    rows = [{"structure": s, "model": "mixedlm", "term": t, "estimate": 0.1, "ci_low": 0.0, "ci_high": 0.2}
            for s in ("vertebral_body", "spinal_cord") for t in ("Intercept", "vendor: Philips vs Siemens", "field_strength: 1.5T vs 3T", "sex: F vs M")]  # fmt: skip
    rows[3]["ci_high"] = float("nan")
    warnings = ["adjusted model (spinal_cord, spinal_canal): mixedlm: ConvergenceWarning: The Hessian matrix ... not positive definite.",
                "adjusted model (vertebral_body): mixedlm: ConvergenceWarning: The MLE may be on the boundary of the parameter space."]  # a variance at 0, not a failed fit
    flags = adjusted_flags(rows, cases, warnings)
    # intercept + GE + Philips + 1.5T dummies span the 4 sites: every site-level term is non-identifiable
    assert flags[:4] == [[], ["confounded with site", "non-identifiable"], ["confounded with site", "non-identifiable"], ["non-identifiable"]]
    assert flags[4:] == [["not converged"], ["confounded with site", "non-identifiable", "not converged"],
                         ["confounded with site", "non-identifiable", "not converged"], ["not converged"]]  # fmt: skip
    # six sites, the same two vendors and field strengths: still confounded, now identifiable
    six = pd.concat([cases, cases.assign(site=cases["site"] + "2", case_id=cases["case_id"] + "x")], ignore_index=True)
    assert adjusted_flags(rows[:3], six, [])[1:] == [["confounded with site"], ["confounded with site"]]
    assert set(site_level_axes(cases, ["vendor", "field_strength", "sex"])) == {"vendor", "field_strength"}


def test_checklist_maps_every_item_to_a_section_or_says_not_provided(demo_run):
    results = json.loads((demo_run[0] / "results.json").read_text())
    ids = {sid for sid, _, _ in SECTIONS}
    rows = checklist_rows(results)
    assert len(rows) == len(CHECKLIST) and {r["source"] for r in rows} == {"TRIPOD+AI", "CLAIM"}
    assert all(r["section"] in ids for r in rows)  # the demo protocol gives intended use, reference standard, registration
    bare = {**results, "study": {**results["study"], "registered": None, "reference_standard": None}}
    missing = {(r["source"], r["item"]) for r in checklist_rows(bare) if r["section"] is None}
    assert missing == {("TRIPOD+AI", "5a"), ("TRIPOD+AI", "6a"), ("TRIPOD+AI", "18"), ("CLAIM", "14")}
    html = (demo_run[0] / "report.html").read_text()
    section = html[html.index('<h2 id="checklist">') : html.index('<h2 id="provenance">')]
    assert section.count("<tr") == len(CHECKLIST) + 1 and all(f'href="#{r["section"]}"' in section for r in rows)


def test_an_older_results_json_without_study_flow_or_families_still_renders(tmp_path):
    """Schema 1.0 files written before `study`, `cohort.flow`, gap `family` and `family_sizes` re-render: the report says
    what is missing instead of failing, and every number shown still equals its row."""
    from report_builders import synthetic_run
    from report_html_helpers import span_text_expected

    from audit.report import render_report, validate_results

    run = synthetic_run(tmp_path / "run", n_cases=24, images=1)
    results = json.loads((run / "results.json").read_text())
    del results["study"], results["cohort"]["flow"], results["statistics"]["settings"]["family_sizes"]
    for row in results["statistics"]["gaps"]:
        del row["family"]
    (run / "results.json").write_text(json.dumps(results))
    assert validate_results(results) == []
    html = render_report(run).read_text(encoding="utf-8")
    assert "This results.json has no participant flow" in html and "predates the overlap check" in html
    assert "not provided in the protocol" in html and "one family of" in html
    parser = ReportParser()
    parser.feed(html)
    assert parser.spans and all(text == span_text_expected(results, attrs) for attrs, text in parser.spans)
