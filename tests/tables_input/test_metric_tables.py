"""Audits from per-case metric tables: long, wide and Parquet tables, nnU-Net summary.json, metadata table.

The oracle for the table readers is the long table the builders start from: writing it in a published
layout and reading it back must give the same values. The nnU-Net oracle is nnunetv2's own
``compute_metrics`` + ``save_summary_json`` on tiny label volumes, checked against Dice by numpy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.tables_input import (
    MetricInputError,
    load_metric_input,
    metric_directions,
    parse_metric_input,
)

STRUCTURES = ("vertebral_body", "intervertebral_disc")
SHORT = {"vb": "vertebral_body", "disc": "intervertebral_disc"}
METRICS = ("dice", "hd95", "nsd_2mm")


def published_long_results(model_shift: float, n_cases: int = 12, seed: int = 0) -> pd.DataFrame:
    """Per-case results like published tables: case id, dice/hd95/nsd per structure (one model)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        for short in SHORT:
            dice = float(np.clip(0.9 - model_shift + rng.normal(0, 0.03), 0, 1))
            rows += [
                {"case": f"CSS{i:04d}", "structure": short, "metric": "dsc", "value": dice},
                {"case": f"CSS{i:04d}", "structure": short, "metric": "hd95", "value": float(rng.gamma(2.0, 1.5))},
                {"case": f"CSS{i:04d}", "structure": short, "metric": "nsd", "value": float(np.clip(dice + 0.02, 0, 1))},
            ]
    return pd.DataFrame(rows)


def wide_from_long(long: pd.DataFrame) -> pd.DataFrame:
    """The same results as one row per case with ``<metric>_<structure>`` columns."""
    wide = long.pivot(index="case", columns=["metric", "structure"], values="value")
    wide.columns = [f"{m}_{s}" for m, s in wide.columns]
    return wide.reset_index()


def clinical_table(n_cases: int = 12) -> pd.DataFrame:
    """CSpineSeg-like clinical rows (raw vocabulary: Female/Male, Not Reported, GE MEDICAL SYSTEMS)."""
    return pd.DataFrame(
        {
            "case": [f"CSS{i:04d}" for i in range(n_cases)],
            "patient": [f"P{i // 2:04d}" for i in range(n_cases)],  # two exams per patient
            "site_id": ["duke-1" if i % 3 else "duke-2" for i in range(n_cases)],
            "age_at_index": [str(30 + 3 * i) for i in range(n_cases)],
            "sex": ["Female" if i % 2 else "Male" for i in range(n_cases)],
            "race": ["White", "Black or African American", "Not Reported"] * (n_cases // 3),
            "manufacturer": ["GE MEDICAL SYSTEMS", "SIEMENS"] * (n_cases // 2),
        }
    )


def metadata_section(path: Path) -> dict:
    return {
        "path": str(path),
        "columns": {"case_id": "case", "patient_id": "patient", "site": "site_id", "age": "age_at_index", "sex": "sex", "race": "race", "vendor": "manufacturer"},
    }


def table_section(model: str, path: Path, layout: str) -> dict:
    section = {"model": model, "path": str(path), "layout": layout, "case_id": "case", "structures": SHORT, "metrics": {"dsc": "dice", "nsd": "nsd_2mm"}}
    if layout == "wide":
        section["pattern"] = "{metric}_{structure}"
    return section


@pytest.fixture()
def published(tmp_path):
    """Three models as published: long CSV, wide CSV, wide Parquet; plus the clinical TSV."""
    models = {"nnunet-2d": published_long_results(0.0, seed=1), "nnunet-3d": published_long_results(0.02, seed=2), "nnunet-ens": published_long_results(0.01, seed=3)}
    models["nnunet-2d"].to_csv(tmp_path / "2d_long.csv", index=False)
    wide_from_long(models["nnunet-3d"]).to_csv(tmp_path / "3d_wide.csv", index=False)
    wide_from_long(models["nnunet-ens"]).to_parquet(tmp_path / "ens_wide.parquet")
    clinical_table().to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    section = {
        "metadata": metadata_section(tmp_path / "clinical.tsv"),
        "tables": [
            table_section("nnunet-2d", tmp_path / "2d_long.csv", "long"),
            table_section("nnunet-3d", tmp_path / "3d_wide.csv", "wide"),
            table_section("nnunet-ens", tmp_path / "ens_wide.parquet", "wide"),
        ],
    }
    return section, models


def _values(long: pd.DataFrame) -> pd.Series:
    canon = long.assign(structure=long["structure"].map(SHORT), metric=long["metric"].map({"dsc": "dice", "nsd": "nsd_2mm", "hd95": "hd95"}))
    return canon.set_index(["case", "structure", "metric"])["value"].sort_index()


def test_long_wide_and_parquet_tables_read_back_to_the_published_values(published):
    section, models = published
    data = load_metric_input(parse_metric_input(section), structures=STRUCTURES, metrics=METRICS)
    assert set(data.tables) == set(models)
    for model, long in models.items():
        table = data.tables[model]
        assert (table["status"] == "ok").all() and len(table) == 12 * 2 * 3
        got = table.assign(case=table["case_id"].str.split("/").str[1]).set_index(["case", "structure", "metric"])["value"].sort_index()
        np.testing.assert_allclose(got.to_numpy(), _values(long).to_numpy(), rtol=1e-15)  # CSV round trip is exact (repr floats)
        assert list(got.index) == list(_values(long).index)


def test_metadata_table_becomes_a_harmonized_manifest_without_paths(published):
    section, _ = published
    data = load_metric_input(parse_metric_input(section), structures=STRUCTURES, metrics=METRICS)
    m = data.manifest.set_index("case_id")
    assert len(m) == 12 and set(m["site"]) == {"duke-1", "duke-2"}
    assert m.loc["duke-2/CSS0000", "sex"] == "M" and m.loc["duke-1/CSS0001", "sex"] == "F"
    assert m.loc["duke-1/CSS0002", "race"] == "Unknown" and m.loc["duke-1/CSS0002", "race_raw"] == "Not Reported"
    assert m.loc["duke-2/CSS0000", "vendor"] == "GE" and m.loc["duke-1/CSS0001", "vendor"] == "Siemens"
    assert m.loc["duke-1/CSS0005", "age_years"] == 45.0
    assert (m["image_path"] == "").all() and (m["label_path"] == "").all()
    assert m.loc["duke-1/CSS0001", "patient_id"] == m.loc["duke-2/CSS0000", "patient_id"] == "P0000"
    assert data.higher_is_better == {"dice": True, "hd95": False, "nsd_2mm": True}


def test_missing_cases_and_values_become_failed_rows_never_gaps(published, tmp_path):
    section, models = published
    long = models["nnunet-2d"]
    drop_case = long["case"] == "CSS0004"
    drop_value = (long["case"] == "CSS0007") & (long["structure"] == "disc") & (long["metric"] == "hd95")
    long[~drop_case & ~drop_value].to_csv(tmp_path / "2d_long.csv", index=False)
    data = load_metric_input(parse_metric_input(section), structures=STRUCTURES, metrics=METRICS)
    t = data.tables["nnunet-2d"].set_index(["case_id", "structure", "metric"]).sort_index()
    assert len(t) == 12 * 2 * 3
    assert (t.loc["duke-1/CSS0004", "status"] == "failed").all()
    assert t.loc[("duke-1/CSS0007", "intervertebral_disc", "hd95"), "status"] == "failed"
    assert t.loc[("duke-1/CSS0007", "intervertebral_disc", "dice"), "status"] == "ok"
    assert [(f.case_id, f.error_type) for f in data.missing["nnunet-2d"]] == [("duke-1/CSS0004", "MissingMetrics")]
    assert data.missing["nnunet-3d"] == () and data.failures == ()


def test_empty_and_infinite_values_follow_the_declared_policy(tmp_path):
    pd.DataFrame({"case": ["a", "b", "c"], "dice_vb": ["0.9", "", "0"], "hd95_vb": ["2.5", "", "inf"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"case": ["a", "b", "c"]}).to_csv(tmp_path / "meta.csv", index=False)
    section = {
        "metadata": {"path": str(tmp_path / "meta.csv"), "columns": {"case_id": "case"}, "site": "s1"},
        "tables": [{"model": "m", "path": str(tmp_path / "t.csv"), "layout": "wide", "case_id": "case", "pattern": "{metric}_{structure}",
                    "structures": {"vb": "vertebral_body"}, "missing_value": "both_empty"}],
    }
    table = load_metric_input(parse_metric_input(section), structures=("vertebral_body",), metrics=("dice", "hd95")).tables["m"]
    status = table.set_index(["case_id", "metric"]).sort_index()["status"]
    assert status[("s1/a", "dice")] == "ok" and status[("s1/b", "dice")] == "both_empty" and status[("s1/c", "hd95")] == "missed"
    assert math.isinf(table.set_index(["case_id", "metric"]).sort_index().loc[("s1/c", "hd95"), "value"])


def test_unknown_metric_must_be_declared_with_its_direction(tmp_path):
    pd.DataFrame({"case_id": ["a"], "structure": ["vertebral_body"], "metric": ["boundary_iou"], "value": ["0.7"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"case_id": ["a"]}).to_csv(tmp_path / "meta.csv", index=False)
    section = {"metadata": {"path": str(tmp_path / "meta.csv"), "site": "s1"}, "tables": [{"model": "m", "path": str(tmp_path / "t.csv")}]}
    with pytest.raises(MetricInputError, match=r"metric 'boundary_iou' is neither a registered metric nor declared"):
        load_metric_input(parse_metric_input(section), structures=("vertebral_body",), metrics=("dice",))
    with pytest.raises(MetricInputError, match=r"'boundary_iou' is not a registered metric; declare it"):
        metric_directions(["boundary_iou"], {})
    section["declared_metrics"] = {"boundary_iou": {"higher_is_better": True}}
    data = load_metric_input(parse_metric_input(section), structures=("vertebral_body",), metrics=("boundary_iou",))
    assert data.higher_is_better == {"boundary_iou": True}
    assert data.tables["m"]["value"].tolist() == [0.7]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"layout": "stacked"}, r"metric_input.tables\[0\].layout: allowed values are \['long', 'wide', 'nnunet_summary'\]; found 'stacked'"),
        ({"missing_value": "zero"}, r"metric_input.tables\[0\].missing_value: allowed values are \['failed', 'both_empty'\]; found 'zero'"),
        ({"structures": {"vb": "vertebral-body"}}, r"metric_input.tables\[0\].structures.vb: "),
        ({"layout": "wide"}, r"a wide table needs 'pattern'"),
        ({"colour": 1}, r"metric_input.tables\[0\].colour: unknown key"),
    ],
    ids=["layout", "missing-value", "structure", "wide-without-columns", "unknown-key"],
)
def test_bad_table_sections_name_the_field(patch, message):
    section = {"metadata": {"path": "m.csv", "site": "s"}, "tables": [{"model": "m", "path": "t.csv", **patch}]}
    with pytest.raises(MetricInputError, match=message):
        parse_metric_input(section)


def test_non_numeric_value_names_row_and_column(tmp_path):
    pd.DataFrame({"case": ["a"], "dice_vb": ["high"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"case": ["a"]}).to_csv(tmp_path / "meta.csv", index=False)
    section = {"metadata": {"path": str(tmp_path / "meta.csv"), "columns": {"case_id": "case"}, "site": "s"},
               "tables": [{"model": "m", "path": str(tmp_path / "t.csv"), "layout": "wide", "case_id": "case", "columns": {"dice_vb": {"structure": "vertebral_body", "metric": "dice"}}}]}
    with pytest.raises(MetricInputError, match=r"tables\[0\] row 1 column 'dice_vb': expected a number, inf or an empty cell; found 'high'"):
        load_metric_input(parse_metric_input(section), structures=("vertebral_body",), metrics=("dice",))


# ---- nnU-Net summary.json --------------------------------------------------------------------------


def nnunet_label_pair(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction (labels 1 and 2) for: ``ok`` (one slab of label 1 missed), ``missed`` (2 absent),
    ``both_empty`` (no 2 anywhere)."""
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:4, 2:6, 2:6] = 1
    ref[4:6, 2:5, 2:5] = 2
    pred = ref.copy()
    pred[1, 2:6, 2:6] = 0
    if kind == "missed":
        pred[pred == 2] = 0
    if kind == "both_empty":
        ref[ref == 2] = 0
        pred[pred == 2] = 0
    return ref, pred


def write_nnunet_summary(folder: Path, kinds: dict[str, str]) -> Path:
    """summary.json written by nnunetv2's compute_metrics and save_summary_json (the layout of its evaluation)."""
    SimpleITK = pytest.importorskip("SimpleITK")
    evaluate = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    (folder / "ref").mkdir(parents=True)
    (folder / "pred").mkdir()
    results = []
    for case, kind in kinds.items():
        ref, pred = nnunet_label_pair(kind)
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(ref), str(folder / "ref" / f"{case}.nii.gz"))
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(pred), str(folder / "pred" / f"{case}.nii.gz"))
        results.append(evaluate.compute_metrics(str(folder / "ref" / f"{case}.nii.gz"), str(folder / "pred" / f"{case}.nii.gz"), SimpleITKIO(), [1, 2, (1, 2)]))
    # as compute_metrics_on_folder does after its worker pool
    means = {r: {m: np.nanmean([c["metrics"][r][m] for c in results]) for m in results[0]["metrics"][1]} for r in [1, 2, (1, 2)]}
    for part in (*results, means):
        recursive_fix_for_json_export(part)
    out = folder / "summary.json"
    evaluate.save_summary_json({"metric_per_case": results, "mean": means, "foreground_mean": means[1]}, str(out))
    return out


def numpy_dice(ref: np.ndarray, pred: np.ndarray, label: int) -> float:
    a, b = ref == label, pred == label
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_nnunet_summary_json_reads_dice_and_status_from_nnunets_own_output(tmp_path):
    summary = write_nnunet_summary(tmp_path / "nnunet", {"case_000": "ok", "case_001": "missed", "case_002": "both_empty"})
    pd.DataFrame({"case_id": ["case_000", "case_001", "case_002"]}).to_csv(tmp_path / "meta.csv", index=False)
    section = {"metadata": {"path": str(tmp_path / "meta.csv"), "site": "center"},
               "tables": [{"model": "3d_fullres", "path": str(summary), "structures": {"1": "vertebral_body", "2": "intervertebral_disc"}}]}
    spec = parse_metric_input(section)
    assert spec.tables[0].layout == "nnunet_summary"  # chosen by the .json extension
    table = load_metric_input(spec, structures=STRUCTURES, metrics=("dice", "iou")).tables["3d_fullres"]
    t = table.set_index(["case_id", "structure", "metric"]).sort_index()
    ref, pred = nnunet_label_pair("ok")
    assert t.loc[("center/case_000", "vertebral_body", "dice"), "value"] == pytest.approx(numpy_dice(ref, pred, 1), rel=1e-12)
    assert t.loc[("center/case_000", "intervertebral_disc", "dice"), "value"] == pytest.approx(1.0, rel=1e-12)
    assert t.loc[("center/case_001", "intervertebral_disc", "dice"), ["value", "status"]].tolist() == [0.0, "missed"]
    assert t.loc[("center/case_002", "intervertebral_disc", "dice"), "status"] == "both_empty"
    assert math.isnan(t.loc[("center/case_002", "intervertebral_disc", "dice"), "value"])
    assert t.loc[("center/case_002", "vertebral_body", "iou"), "status"] == "ok"


def test_nnunet_summary_without_label_mapping_is_a_clear_error(tmp_path):
    (tmp_path / "summary.json").write_text('{"metric_per_case": []}')
    pd.DataFrame({"case_id": ["a"]}).to_csv(tmp_path / "meta.csv", index=False)
    section = {"metadata": {"path": str(tmp_path / "meta.csv"), "site": "s"}, "tables": [{"model": "m", "path": str(tmp_path / "summary.json")}]}
    with pytest.raises(MetricInputError, match=r"tables\[0\].structures: map nnU-Net's label keys to structures"):
        load_metric_input(parse_metric_input(section), structures=STRUCTURES, metrics=("dice",))
