"""The ablation benchmark end to end at a tiny budget: it runs, writes its table and JSON, numbers are finite;
its defaults (bundled crystals, scratch output folder, the compact table on stdout)."""

from __future__ import annotations

import json
import math
import shlex

import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import torch  # noqa: E402

import benchmarks.harness.data  # noqa: E402
from benchmarks import ablation, ablation_report  # noqa: E402
from benchmarks.harness.data import load_data  # noqa: E402
from benchmarks.harness.training import epoch_labels, parse_strategy  # noqa: E402
from soft_niggli.metrics import lattice_error  # noqa: E402


def test_ablation_main_writes_finite_results(tmp_path):
    argv = ["--datasets", "aflow", "--epochs", "1", "--strategies", "mse", "proxy", "--bases", "niggli", "random",
            "--seeds", "1", "--train-size", "24", "--val-size", "8", "--out", str(tmp_path), "--no-progress"]
    assert ablation.main(argv) == 0
    md = (tmp_path / "ablation_aflow.md").read_text()
    assert "python -m benchmarks.ablation --datasets aflow" in md and "| mlp | proxy | random |" in md
    data = json.loads((tmp_path / "ablation_aflow.json").read_text())
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
    assert ablation.main(["--rebuild", "--datasets", "aflow", "--out", str(tmp_path)]) == 0
    rebuilt = json.loads((tmp_path / "ablation_aflow.json").read_text())
    assert json.dumps(rebuilt["summary"]) == json.dumps(data["summary"])  # NaN-safe comparison
    assert (tmp_path / "ablation_aflow.md").read_text() == md


def test_unregistered_strategy_is_skipped_with_a_warning(tmp_path, capsys):
    ablation.main(["--epochs", "0", "--strategies", "mse", "no-such-loss", "--bases", "raw", "--seeds", "1",
                   "--train-size", "8", "--val-size", "4", "--out", str(tmp_path), "--no-progress", "--no-match"])
    assert "no-such-loss" in capsys.readouterr().err
    data = json.loads((tmp_path / "ablation_perov_5_small.json").read_text())  # the default dataset
    assert {r["strategy"] for r in data["runs"]} == {"mse"}


def test_default_run_reads_the_bundled_crystals_and_writes_to_a_scratch_folder(tmp_path, monkeypatch, capsys):
    # The defaults at a tiny budget: bundled perov_5 crystals, every default strategy and basis, no --out.
    monkeypatch.setattr(ablation.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    assert ablation.main(["--epochs", "1", "--seeds", "2", "--train-size", "16", "--val-size", "4",
                          "--no-progress"]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "soft_niggli_ablation").iterdir()
    assert f"{folder}/ablation_perov_5_small.*" in out
    assert {p.name for p in folder.iterdir()} >= {"ablation_perov_5_small.json", "ablation_perov_5_small.md",
                                                   "ablation_overview.md"}
    record = json.loads((folder / "ablation_perov_5_small.json").read_text())
    runs = record["runs"]
    assert {r["strategy"] for r in runs} == set(ablation.DEFAULT_STRATEGIES) and len(runs) == 5 * 3 * 2
    assert "soft_niggli/data/NOTICE" in record["data"]["source"]
    # The compact table: one row per strategy plus the reference, lattice error and match rate per basis.
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("strategy"))
    assert lines[header].split() == ["strategy"] + ["niggli", "raw", "random"] * 2
    assert lines[header + 1].startswith("no learning")
    rows = [line.split() for line in lines[header + 2:header + 7]]
    assert [r[0] for r in rows] == list(ablation.DEFAULT_STRATEGIES) and all(len(r) == 7 and "±" in r[1] for r in rows)
    assert ablation_report.LEGEND in out and max(len(line) for line in lines[header - 1:header + 7]) <= 80


def test_no_folder_dataset_names_the_ways_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    monkeypatch.setattr(ablation, "data_dir", lambda path=None: path)  # as from an installed copy: no ../shared
    monkeypatch.setattr(benchmarks.harness.data, "data_dir", lambda path=None: path)
    with pytest.raises(SystemExit) as exc:
        ablation.main(["--datasets", "mp_20", "--epochs", "0", "--out", str(tmp_path), "--no-progress"])
    message = str(exc.value.code)
    assert "perov_5_small" in message and "SOFT_NIGGLI_DATA" in message


def test_merge_and_rebuild_need_an_out_folder(capsys):
    for flag in ("--merge", "--rebuild"):
        with pytest.raises(SystemExit):
            ablation.parse_args([flag])
        assert "--out" in capsys.readouterr().err


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


def test_a_model_of_ones_own_plugs_in_by_module_and_class(tmp_path, monkeypatch):
    # A user's package, importable from the path: composition in, (lattice, frac) out.
    (tmp_path / "my_csp_model.py").write_text(
        "import torch\n"
        "class MeanCell(torch.nn.Module):\n"
        "    def __init__(self, max_atoms, volume_per_atom, **options):\n"
        "        super().__init__()\n"
        "        self.side = torch.nn.Parameter(torch.tensor(3.0))\n"
        "    def forward(self, batch):\n"
        "        eye = torch.eye(3, dtype=self.side.dtype).expand(len(batch), 3, 3)\n"
        "        return self.side * eye, torch.zeros(len(batch.species), 3, dtype=self.side.dtype)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["--models", "my_csp_model:MeanCell", "--epochs", "1", "--strategies", "mse", "--bases", "niggli",
            "--seeds", "1", "--train-size", "8", "--val-size", "4", "--out", str(tmp_path / "out"), "--no-progress",
            "--no-match"]
    assert ablation.main(argv) == 0
    (run,) = json.loads((tmp_path / "out" / "ablation_perov_5_small.json").read_text())["runs"]
    assert run["model"] == "my_csp_model:MeanCell" and math.isfinite(run["metrics"]["lattice_error"])
    with pytest.raises(SystemExit, match="unknown model"):
        ablation.main(["--models", "no_such_module:Net", "--out", str(tmp_path / "out")])
