"""The `convexcnn` command end to end (small sizes) and the examples."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from convexcnn.cli import main
from convexcnn.data import load_dataset
from convexcnn.io import load_network

ROOT = Path(__file__).resolve().parents[1]


def test_fit_command_prints_table_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "fit",
            "--data",
            "digits",
            "--classes",
            "3,8",
            "--train-size",
            "30",
            "--patterns",
            "20",
            "--baseline-seeds",
            "2",
            "--baseline-epochs",
            "30",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for word in (
        "convex program",
        "recovered network",
        "adam best of 2",
        "adam median",
        "test acc",
    ):
        assert word in printed
    results = json.loads((out / "results.json").read_text())
    assert results["network_objective"] == pytest.approx(results["objective"], rel=1e-6)
    assert len(results["baselines"]) == 2
    network, metadata = load_network(out)
    data = load_dataset("digits", classes=(3, 8), limit=30)
    X = torch.as_tensor(data.X_train)
    with torch.no_grad():
        assert network(X).shape == (30,)
    assert metadata["architecture"] == "two_layer"


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["fit", "--beta", "-1", "--baseline-seeds", "0"], "beta"),
        (["fit", "--pooling", "median", "--baseline-seeds", "0"], "pooling"),
        (["fit", "--data", "/nonexistent.npz", "--baseline-seeds", "0"], "nonexistent"),
        (["fit", "--option", "gated", "--baseline-seeds", "0"], "KEY=VALUE"),
    ],
)
def test_fit_command_errors(argv: list[str], word: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--train-size", "20", "--patterns", "5"]) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err


def test_architectures_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["architectures"]) == 0
    assert "two_layer" in capsys.readouterr().out


def test_quickstart_example_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "24"])
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "recovered network" in printed and "Conv2d" in printed
