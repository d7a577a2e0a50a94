"""The ablation benchmark end to end at a tiny budget: it runs, writes its table and JSON, numbers are finite."""

from __future__ import annotations

import json
import math
import shlex

import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import torch  # noqa: E402

from benchmarks import ablation  # noqa: E402
from benchmarks.data import load_data  # noqa: E402
from benchmarks.training import epoch_labels, parse_strategy  # noqa: E402
from soft_niggli.metrics import lattice_error  # noqa: E402


def test_ablation_main_writes_finite_results(tmp_path):
    argv = ["--datasets", "aflow", "--epochs", "1", "--strategies", "mse", "proxy", "--bases", "niggli", "random",
            "--seeds", "1", "--train-size", "24", "--val-size", "8", "--out", str(tmp_path), "--no-progress"]
    records = ablation.main(argv)
    md = (tmp_path / "ablation_aflow.md").read_text()
    assert "python -m benchmarks.ablation --datasets aflow" in md and "| mlp | proxy | random |" in md
    data = json.loads((tmp_path / "ablation_aflow.json").read_text())
    assert data == json.loads(json.dumps(records["aflow"], default=float))
    assert data["commands"] == ["python -m benchmarks.ablation " + shlex.join(argv)]
    assert len(data["runs"]) == 4 and len(data["summary"]) == 4
    for run in data["runs"]:
        assert run["steps"] == 1 and run["exception_steps"] + run["nan_steps"] + run["updates"] == run["steps"]
        for key in ("lattice_error", "volume_error", "match_rate"):
            assert math.isfinite(run["metrics"][key])
        assert len(run["curves"]["val_lattice_error"]) == 2
    assert (tmp_path / "ablation_aflow_curves.png").stat().st_size > 0
    assert (tmp_path / "ablation_aflow_metrics.png").stat().st_size > 0
    assert "| aflow niggli | aflow random |" in (tmp_path / "ablation_overview.md").read_text()

    (tmp_path / "ablation_aflow.md").unlink()
    rebuilt = ablation.main(["--rebuild", "--datasets", "aflow", "--out", str(tmp_path)])
    assert json.dumps(rebuilt["aflow"]["summary"]) == json.dumps(data["summary"])  # NaN-safe comparison
    assert (tmp_path / "ablation_aflow.md").read_text() == md


def test_unregistered_strategy_is_skipped_with_a_warning(tmp_path, capsys):
    ablation.main(["--epochs", "0", "--strategies", "mse", "no-such-loss", "--bases", "raw", "--seeds", "1",
                   "--train-size", "8", "--val-size", "4", "--out", str(tmp_path), "--no-progress", "--no-match"])
    assert "no-such-loss" in capsys.readouterr().err
    data = json.loads((tmp_path / "ablation_aflow.json").read_text())
    assert {r["strategy"] for r in data["runs"]} == {"mse"}


def test_random_labels_are_rebased_each_epoch_and_describe_the_same_crystals():
    data = load_data("aflow", 16, 4, None, None, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    first, second = (epoch_labels(data, "random", gen, rotate=True) for _ in range(2))
    assert not torch.allclose(first.lattice, second.lattice)
    assert lattice_error(first.lattice, data.train_raw.lattice).error.max() < 1e-8
    assert lattice_error(second.lattice, data.train_raw.lattice).error.max() < 1e-8


def test_strategy_spec_parses_options():
    assert parse_strategy("proxy:frame=prediction,skew_weight=0.5,labels_canonical=true") == (
        "proxy", {"frame": "prediction", "skew_weight": 0.5, "labels_canonical": True})
    assert parse_strategy("mse") == ("mse", {})
