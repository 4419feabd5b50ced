"""`deinfer predictor evaluate` on train/test folders cut from the public data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from deinfer.cli import main
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"public data not found at {DATA}")
FIELDS = {"dataset", "backend", "n_train", "n_test", "mape", "r2", "mae", "under_rate"}


def _split_csv(source: Path, train: Path, test: Path, is_test: object) -> None:
    """Copy a CSV into two files by row, header kept, lines unchanged."""
    lines = source.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    for target in (train, test):
        target.parent.mkdir(parents=True, exist_ok=True)
    records = list(csv.DictReader([header, *rows]))
    chosen = [is_test(record) for record in records]  # type: ignore[operator]
    train.write_text(header + "".join(r for r, c in zip(rows, chosen, strict=True) if not c))
    test.write_text(header + "".join(r for r, c in zip(rows, chosen, strict=True) if c))


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["predictor", "evaluate", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == FIELDS
    return dict(report)


def test_deinfer_held_out_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "deinfer-rtx3080"
    pair = {"resnet-18", "vgg-13"}
    _split_csv(
        DATA / name / "model_interference_feature2.csv",
        tmp_path / "train" / "model_interference_feature2.csv",
        tmp_path / "test" / "model_interference_feature2.csv",
        lambda r: {r["modelname1"], r["modelname2"]} == pair,
    )
    report = _evaluate(
        capsys,
        "--dataset",
        name,
        "--train",
        str(tmp_path / "train"),
        "--test",
        str(tmp_path / "test"),
    )
    assert report["dataset"] == name and report["n_test"] == 63
    assert report["n_train"] == 3213 - 63
    mae, r2 = float(report["mae"]), float(report["r2"])  # type: ignore[arg-type]
    assert 0 < mae < 5.0  # pp; predicting the mean scores ~5
    assert r2 > 0.0


def test_igniter_held_out_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "igniter-v100"
    lines = (DATA / name / "gpulet.config").read_text().splitlines()
    solo = [line for line in lines if not line.startswith('{"interference"')]
    latency = json.loads(next(x for x in lines if '"latency": [[' in x))["interference"]["latency"]
    for part, keep in (("train", False), ("test", True)):
        rows = [r for r in latency if ((r[0], r[1]) == ("alexnet", "ssd")) == keep]
        folder = tmp_path / part
        folder.mkdir()
        body = json.dumps({"interference": {"latency": rows}}, separators=(", ", ": "))
        if part == "train":
            shutil.copy(DATA / name / "config", folder / "config")
            body = "\n".join([*solo, body])
        # The test folder holds only its co-location rows: solo tables and iGniter's
        # coefficients of the same models come from the training folder.
        (folder / "gpulet.config").write_text(body + "\n")
    report = _evaluate(
        capsys,
        "--dataset",
        name,
        "--train",
        str(tmp_path / "train"),
        "--test",
        str(tmp_path / "test"),
        "--backend",
        "analytical",
    )
    assert report["backend"] == "analytical" and report["n_test"] == 250
    assert 0 < float(report["mape"]) < 8.0  # type: ignore[arg-type]  # no-interference: ~8
    assert float(report["under_rate"]) < 0.1  # type: ignore[arg-type]


def _rapp_resnets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: str
) -> dict[str, object]:
    """Train on a few other families from the flat CSV; test on the ResNets' JSON `files`."""
    name = "rapp-v100"
    train_models = {"vgg11", "vgg16", "densenet121", "mnasnet1_0", "regnet_x_8gf", "alexnet"}
    _split_csv(
        DATA / name / "rapp_profiles_flat.csv",
        tmp_path / "unused" / "rapp_profiles_flat.csv",
        tmp_path / "train" / "rapp_profiles_flat.csv",
        lambda r: r["model_name"] in train_models,
    )
    test = tmp_path / "test" / "graph_features_all_models"
    test.mkdir(parents=True)
    for path in (DATA / name / "graph_features_all_models").glob(files):
        shutil.copy(path, test / path.name)
    return _evaluate(
        capsys,
        "--dataset",
        name,
        "--train",
        str(tmp_path / "train"),
        "--test",
        str(tmp_path / "test"),
    )


def test_rapp_held_out_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _rapp_resnets(tmp_path, capsys, "resnet*_*.json")
    assert report["n_test"] == 3 * 800
    # The fitted latency law on 6 training models: ~10 % MAPE on the three ResNets.
    assert 0 < float(report["mape"]) < 20.0  # type: ignore[arg-type]


def test_rapp_model_without_anchor_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the SM 50 % files of the ResNets hold none of their anchors: those come from the
    operator graphs, not from the training median."""
    report = _rapp_resnets(tmp_path, capsys, "resnet*_50.json")
    assert report["n_test"] == 3 * 40
    # The training median scores ~130 % here; graph-estimated anchors ~20 %.
    assert 0 < float(report["mape"]) < 60.0  # type: ignore[arg-type]


def test_missing_data_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "predictor",
            "evaluate",
            "--dataset",
            "igniter-v100",
            "--train",
            str(tmp_path),
            "--test",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "gpulet.config not found" in capsys.readouterr().err
