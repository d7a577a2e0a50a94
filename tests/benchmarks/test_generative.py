"""The flow-matching benchmark (benchmarks.harness.flow_model, benchmarks.harness.flow_matching, benchmarks.generative):
the network's symmetries, the velocity formula, the prior alignment and reduced-form coupling, distributed
training (2 gloo processes equal one process on the same global batch) and the command line end to end.

Row convention: lattices ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; rotations
``L' = L Qᵀ``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, shared_data_file
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.harness.flow_matching import LatticePrior, interpolate, sample
from benchmarks.harness.flow_model import FlowNet
from soft_niggli import CrystalBatch, random_unimodular
from soft_niggli.lattice import wrap
from soft_niggli.losses.periodic import minimum_image
from soft_niggli.testing import crystals, rotations

REPO = REPO_ROOT


def _model(seed=0, hidden=16, layers=2):
    torch.manual_seed(seed)
    net = FlowNet(12.0, hidden=hidden, layers=layers, fourier=3).double()
    # Nonzero heads (they start at zero, which would make the symmetry tests trivial).
    torch.nn.init.normal_(net.coord_head[-1].weight, std=0.3)
    torch.nn.init.normal_(net.lattice_head[-1].weight, std=0.3)
    torch.nn.init.normal_(net.lattice_head[-1].bias, std=0.3)
    return net


def _run(net, batch: CrystalBatch, t):
    return net(batch.lattice, batch.frac, t, batch.species, batch.num_atoms)


def _frac_close(a, b, atol=1e-8):
    torch.testing.assert_close(minimum_image(a - b), torch.zeros_like(a), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------- symmetries


@settings(max_examples=20)
@given(crystals(max_atoms=5, max_crystals=3), rotations(proper=False), st.floats(0.0, 0.99))
def test_rotating_the_lattice_rotates_the_lattice_output_and_keeps_the_coordinates(batch, Q, t):
    net = _model()
    tt = torch.full((len(batch),), t, dtype=torch.float64)
    L, F = _run(net, batch, tt)
    rotated = CrystalBatch(batch.lattice @ Q.T, batch.frac, batch.num_atoms, batch.species)
    L2, F2 = _run(net, rotated, tt)
    torch.testing.assert_close(L2, L @ Q.T, atol=1e-8, rtol=1e-8)
    _frac_close(F2, F)


@settings(max_examples=20)
@given(crystals(max_atoms=5, max_crystals=3), st.tuples(*[st.floats(-2.0, 2.0)] * 3), st.floats(0.0, 0.99))
def test_a_common_translation_translates_the_coordinate_output(batch, shift, t):
    net = _model()
    tt = torch.full((len(batch),), t, dtype=torch.float64)
    L, F = _run(net, batch, tt)
    s = torch.tensor(shift, dtype=torch.float64)
    moved = CrystalBatch(batch.lattice, wrap(batch.frac + s), batch.num_atoms, batch.species)
    L2, F2 = _run(net, moved, tt)
    torch.testing.assert_close(L2, L, atol=1e-8, rtol=1e-8)
    _frac_close(F2, F + s)


@settings(max_examples=20)
@given(crystals(max_atoms=6, max_crystals=3), st.integers(0, 2**31 - 1))
def test_permuting_atoms_within_a_crystal_permutes_the_outputs(batch, seed):
    net = _model()
    g = torch.Generator().manual_seed(seed)
    tt = torch.rand(len(batch), generator=g, dtype=torch.float64)
    L, F = _run(net, batch, tt)
    perm = torch.cat([batch._ptr[b] + torch.randperm(int(n), generator=g) for b, n in enumerate(batch.num_atoms)])
    permuted = CrystalBatch(batch.lattice, batch.frac[perm], batch.num_atoms, batch.species[perm])
    L2, F2 = _run(net, permuted, tt)
    torch.testing.assert_close(L2, L, atol=1e-8, rtol=1e-8)
    _frac_close(F2, F[perm])


def test_untrained_heads_return_the_input():
    torch.manual_seed(0)
    net = FlowNet(12.0, hidden=16, layers=1, fourier=2).double()
    L = 4 * torch.eye(3, dtype=torch.float64)[None] + 0.1 * torch.randn(1, 3, 3, dtype=torch.float64)
    f = torch.rand(2, 3, dtype=torch.float64)
    L2, F2 = net(L, f, torch.tensor([0.3], dtype=torch.float64), torch.tensor([8, 14]), torch.tensor([2]))
    torch.testing.assert_close(L2, L)
    _frac_close(F2, f)


# ------------------------------------------------------------------------------------- flow matching


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_an_exact_prediction_transports_the_prior_to_the_data(steps):
    g = torch.Generator().manual_seed(1)
    num_atoms = torch.tensor([3, 1, 5])
    species = torch.randint(1, 90, (9,), generator=g)
    L1 = 5 * torch.eye(3, dtype=torch.float64) + torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    f1 = torch.rand(9, 3, generator=g, dtype=torch.float64)
    prior = LatticePrior(12.0, 0.5)
    batch = torch.repeat_interleave(torch.arange(3), num_atoms)
    seen = []

    def exact(L, f, t, z, n):
        # The state must be the interpolant of the prior sample at time t, at every step.
        seen.append(float(t[0]))
        L_expected, f_expected = interpolate(L0, f0, L1, f1, t.double(), batch)
        torch.testing.assert_close(L, L_expected, atol=1e-10, rtol=1e-10)
        _frac_close(f, f_expected, atol=1e-10)
        return L1.clone(), f1.clone()

    L0, f0 = prior.sample(num_atoms, torch.Generator().manual_seed(7))
    out = sample(None, num_atoms, species, steps, prior, torch.Generator().manual_seed(7), dtype=torch.float64,
                 predictor=exact)
    assert len(seen) == steps and seen[0] == 0.0
    torch.testing.assert_close(out.lattice, L1, atol=1e-10, rtol=1e-10)
    _frac_close(out.frac, f1, atol=1e-10)


@pytest.mark.parametrize("steps, jump_at, anneal", [(2, 0.5, 0.0), (10, 0.9, 0.0), (50, 0.9, 0.0), (7, 1.0, 3.0),
                                                     (50, 1.0, 10.0)])
def test_the_sampler_variants_land_on_an_exact_prediction(steps, jump_at, anneal):
    # A jump at T takes steps - 1 steps to T then lands on the prediction; anti-annealing moves the
    # coordinates faster but never past the prediction: both end on the data when the prediction is exact.
    g = torch.Generator().manual_seed(2)
    num_atoms = torch.tensor([2, 4])
    L1 = 5 * torch.eye(3, dtype=torch.float64) + torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    f1 = torch.rand(6, 3, generator=g, dtype=torch.float64)
    seen = []

    def exact(L, f, t, z, n):
        seen.append(float(t[0]))
        return L1.clone(), f1.clone()

    out = sample(None, num_atoms, torch.ones(6, dtype=torch.int64), steps, LatticePrior(12.0, 0.5),
                 torch.Generator().manual_seed(3), dtype=torch.float64, predictor=exact, jump_at=jump_at, anneal=anneal)
    assert len(seen) == steps and seen[0] == 0.0
    if jump_at < 1:
        assert seen[-1] == pytest.approx(jump_at)
    torch.testing.assert_close(out.lattice, L1, atol=1e-10, rtol=1e-10)
    _frac_close(out.frac, f1, atol=1e-10)


def test_a_jump_at_the_last_euler_knot_is_plain_euler():
    net = _model()
    args = (torch.tensor([2, 3]), torch.tensor([8, 14, 8, 8, 1]), 10, LatticePrior(12.0, 0.5))
    plain = sample(net, *args, torch.Generator().manual_seed(4), dtype=torch.float64)
    jump = sample(net, *args, torch.Generator().manual_seed(4), dtype=torch.float64, jump_at=0.9)
    torch.testing.assert_close(jump.lattice, plain.lattice)
    torch.testing.assert_close(jump.frac, plain.frac)
    with pytest.raises(ValueError, match="jump_at"):
        sample(net, *args, torch.Generator(), jump_at=1.5)


def test_prior_scale_matches_the_labels():
    g = torch.Generator().manual_seed(0)
    M = random_unimodular((50,), max_entry=1, generator=g).double()
    L = (4 * torch.eye(3, dtype=torch.float64)).expand(50, 3, 3) + 0.0 * M
    labels = CrystalBatch(L, torch.zeros(100, 3, dtype=torch.float64), [2] * 50, [8] * 100)
    prior = LatticePrior.fit(labels, 32.0)
    L0, _ = prior.sample(labels.num_atoms, torch.Generator().manual_seed(1))
    ratio = L0.square().sum((-1, -2)).mean() / L.square().sum((-1, -2)).mean()
    assert 0.7 < float(ratio) < 1.3
    L0r, _ = prior.sample(labels.num_atoms, torch.Generator().manual_seed(1), right_handed=True)
    assert bool((torch.linalg.det(L0r) > 0).all())


# ---------------------------------------------------------------------------------- distributed


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch.distributed as dist

    from benchmarks.harness.flow_matching import FlowConfig, distributed_context, train_flow

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = _tiny_data()
    config = FlowConfig(strategy="mse", epochs=2, batch_size=8, hidden=16, layers=1, fourier=2, ode_steps=(2,),
                        align_prior=True, seed=3)
    record = train_flow(data, config, ctx=distributed_context(), match=False, log_every=0)
    state = {k: v.detach().clone() for k, v in record["model"].state_dict().items()}
    torch.save({"state": state, "losses": record["curves"]["train_loss"]}, Path(out_dir) / f"rank{rank}_of{world}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _tiny_data():
    from benchmarks.harness.data import Data
    from soft_niggli.testing import aflow_crystals

    batch = aflow_crystals(limit=24, max_atoms=6)
    structures = batch.to_structures()
    return Data.from_structures("aflow-tiny", structures[:16], structures[16:])


def test_ema_samples_with_the_averaged_weights_and_cosine_decays_the_rate(monkeypatch):
    from benchmarks.harness import flow_matching
    from benchmarks.harness.flow_matching import FlowConfig, train_flow

    rates = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    torch.set_num_threads(1)
    data = _tiny_data()
    common = dict(strategy="mse", epochs=3, batch_size=8, hidden=16, layers=1, fourier=2, ode_steps=(2,), seed=3,
                  eval_every=1, curve_size=4, curve_steps=2)
    plain = train_flow(data, FlowConfig(**common), match=False)
    averaged = train_flow(data, FlowConfig(**common, ema=0.5, lr_schedule="cosine"), match=True)
    # The cosine rate starts at lr and falls to about lr / 2 (1 - cos(π / S)) at the last of S steps.
    cosine = rates[len(rates) // 2:]
    assert rates[:len(cosine)] == [1e-3] * len(cosine)
    assert cosine[0] == 1e-3 and cosine[-1] < 1e-3 * 0.1 and all(a > b for a, b in zip(cosine, cosine[1:]))
    # The sampler is the average, not the last iterate: a different set of weights, same architecture.
    assert averaged["model"] is not plain["model"]
    assert not all(torch.equal(a, b) for a, b in zip(averaged["model"].parameters(), plain["model"].parameters()))
    assert len(averaged["curves"]["curve_step"]) == 3 and len(averaged["curves"]["curve_rmse"]) == 3
    with pytest.raises(ValueError, match="lr_schedule"):
        train_flow(data, FlowConfig(**{**common, "epochs": 1}, lr_schedule="linear"), match=False)
    assert flow_matching.LR_SCHEDULES == ("constant", "cosine")


def test_two_gloo_processes_train_like_one_process_on_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    init = tmp_path / "init"
    mp.spawn(_ddp_worker, args=(2, str(init), str(tmp_path)), nprocs=2, join=True)
    _ddp_worker(0, 1, "", str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}_of2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0_of1.pt")
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # the ranks stay identical
        torch.testing.assert_close(r0["state"][k], single["state"][k], atol=1e-5, rtol=1e-4)
    assert r0["losses"] == r1["losses"]
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(single["losses"]), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_the_command_line_runs_under_torchrun(tmp_path):
    shared_data_file("perov_5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "benchmarks.generative",
           "--dataset", "perov_5", "--limit", "64,16", "--epochs", "2", "--batch-size", "16", "--hidden", "16",
           "--layers", "1", "--ode-steps", "2", "--out", str(tmp_path), "--no-progress", "--align-prior"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=300)
    record = json.loads((tmp_path / "generative_perov_5.json").read_text())
    assert record["runs"][0]["world_size"] == 2
    assert record["commands"][0].startswith("torchrun --nproc_per_node 2 -m benchmarks.generative")


# --------------------------------------------------------------------------------------- smoke


def test_the_command_line_runs_end_to_end(tmp_path):
    shared_data_file("perov_5")
    from benchmarks.generative import main

    assert main(["--dataset", "perov_5", "--limit", "24,6", "--epochs", "2", "--batch-size", "8", "--hidden", "16",
                 "--layers", "1", "--fourier", "2", "--ode-steps", "1,2", "--strategies", "mse", "softmin",
                 "--bases", "niggli,random", "--coupling", "independent,automorphisms,reduced-forms", "--align-prior",
                 "--eval-every", "1", "--curve-size", "4", "--curve-steps", "2", "--out", str(tmp_path),
                 "--no-progress", "--threads", "1"]) == 0
    for name in ("generative_perov_5.md", "generative_perov_5.json", "generative_perov_5_epochs.png",
                 "generative_perov_5_steps.png", "generative_perov_5_rmse.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "generative_perov_5.json").read_text())
    assert len(saved["runs"]) == 12 and len(saved["summary"]) == 12
    assert saved["commands"][0].startswith("python -m benchmarks.generative --dataset perov_5")
    assert saved["machine"]
    run = saved["runs"][0]
    assert set(run["metrics"]) == {"1", "2"} and run["curves"]["curve_epoch"] == [1, 2]
    for key in ("match_rate", "rmse", "lattice_error", "reducer_ok_share", "spglib_failures"):
        assert key in run["metrics"]["2"]
    page = (tmp_path / "generative_perov_5.md").read_text()
    assert "| strategy | basis | coupling |" in page
    assert page.count("Learning curve, ") == 12 and "| epoch | optimiser step | match rate | RMSE |" in page
    # --render rewrites the page and the figures from the JSON alone.
    for name in ("generative_perov_5.md", "generative_perov_5_rmse.png"):
        (tmp_path / name).unlink()
    assert main(["--dataset", "perov_5", "--out", str(tmp_path), "--render"]) == 0
    assert (tmp_path / "generative_perov_5.md").read_text() == page
    assert (tmp_path / "generative_perov_5_rmse.png").exists()


def test_seed_and_limit_arguments():
    from benchmarks.generative import parse_args

    assert parse_args(["--seeds", "3"]).seeds == (0, 1, 2)
    assert parse_args(["--seeds", "2,"]).seeds == (2,)
    assert parse_args(["--seeds", "1,4"]).seeds == (1, 4)
    assert parse_args(["--limit", ",200"]).limit == (None, 200)
    assert parse_args(["--limit", "50"]).limit == (50,)
    with pytest.raises(SystemExit):
        parse_args(["--bases", "weird"])


def test_a_model_of_ones_own_plugs_in_by_module_and_class(tmp_path):
    shared_data_file("perov_5")
    from benchmarks.generative import main

    assert main(["--dataset", "perov_5", "--limit", "16,4", "--epochs", "1", "--batch-size", "8", "--ode-steps", "2",
                 "--model", "examples.flow_matching_step:TinyFlowNet", "--coupling", "automorphisms",
                 "--align-prior", "--out", str(tmp_path), "--no-progress", "--threads", "1", "--no-match"]) == 0
    record = json.loads((tmp_path / "generative_perov_5.json").read_text())
    (run,) = record["runs"]
    assert run["config"]["model"] == "examples.flow_matching_step:TinyFlowNet"
    assert run["parameters"] < 50_000  # TinyFlowNet, not the default FlowNet
    assert "held out" in record["data"]["source"]
    with pytest.raises(SystemExit):
        main(["--dataset", "perov_5", "--model", "no_such_module:Net", "--out", str(tmp_path), "--no-progress"])


def test_runs_with_another_recipe_are_added_beside_the_others_not_over_them(tmp_path):
    from dataclasses import asdict

    from benchmarks.generative import write_dataset
    from benchmarks.harness.flow_matching import FlowConfig

    def run(seed, match, **recipe):
        config = asdict(FlowConfig(seed=seed, align_prior=True, max_steps=20, **recipe))
        return {"config": config, "epochs_run": 2, "parameters": 10, "steps": 20, "train_time": 6.0,
                "eval_time": 6.0, "curves": {}, "metrics": {"2": {"match_rate": match, "rmse": 0.1}}}

    data = {"train_size": 8, "val_size": 4, "source": "synthetic"}
    write_dataset("perov_5", [run(0, 0.5), run(1, 0.7)], "first", "machine", data, tmp_path)
    record = write_dataset("perov_5", [run(0, 0.2, anneal=3.0)], "second", "machine", data, tmp_path)
    assert len(record["runs"]) == 3
    rows = {r["recipe"]["anneal"]: r for r in record["summary"]}
    assert rows[0.0]["seeds"] == 2 and rows[0.0]["match_rate"] == pytest.approx(0.6)
    assert rows[3.0]["seeds"] == 1 and rows[3.0]["match_rate"] == pytest.approx(0.2)
    page = (tmp_path / "generative_perov_5.md").read_text()
    assert "| recipe |" in page and "anneal=3.0" in page and "anneal=0.0" in page
    # The same recipe and seed again replaces that run.
    record = write_dataset("perov_5", [run(0, 0.4, anneal=3.0)], "third", "machine", data, tmp_path)
    assert len(record["runs"]) == 3
    assert {r["recipe"]["anneal"]: r["match_rate"] for r in record["summary"]}[3.0] == pytest.approx(0.4)


def test_the_sampler_study_adds_up_runs_and_summarises_them_over_seeds(tmp_path):
    shared_data_file("perov_5")
    from benchmarks.sampler_study import SAMPLERS, main

    for seed in (0, 1):
        assert main(["--dataset", "perov_5", "--limit", "16,4", "--max-steps", "2", "--batch-size", "8",
                     "--seed", str(seed), "--out", str(tmp_path)]) == 0
    assert main(["--dataset", "perov_5", "--limit", "16,4", "--max-steps", "2", "--batch-size", "8",
                 "--strategy", "softmin", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "sampler_study.json").read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1, 0] and len(record["runs"][0]["rows"]) == 3 * len(SAMPLERS)
    page = (tmp_path / "sampler_study.md").read_text()
    assert page.count("| perov_5 | mse | niggli | independent | 2 | euler | 2 |") == 1  # one row over both seeds
    assert page.count("| perov_5 | softmin | niggli | independent | 2 | euler | 1 |") == 1
    with pytest.raises(SystemExit):
        main(["--strategy", "no-such-loss", "--out", str(tmp_path)])
    (tmp_path / "sampler_study.md").unlink()
    assert main(["--render", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sampler_study.md").read_text() == page


def test_a_command_counts_as_done_only_where_its_recipe_ran(tmp_path):
    # benchmarks/generative_matrix.sh skips a command whose runs are in the JSON; a run of the same setting
    # and seed but another recipe (here 20 000 steps) in the same folder is not one of them.
    from dataclasses import asdict

    from benchmarks.generative import has_runs, write_dataset
    from benchmarks.harness.flow_matching import FlowConfig

    def run(max_steps):
        config = asdict(FlowConfig(seed=0, align_prior=True, epochs=1000, max_steps=max_steps))
        return {"config": config, "epochs_run": 2, "parameters": 10, "steps": max_steps, "train_time": 6.0,
                "eval_time": 6.0, "curves": {}, "metrics": {"2": {"match_rate": 0.5, "rmse": 0.1}}}

    argv = ["--dataset", "perov_5", "--seeds", "0,", "--strategies", "mse", "--bases", "niggli", "--coupling",
            "independent", "--batch-size", "256", "--align-prior", "--epochs", "1000", "--max-steps", "4000",
            "--eval-every", "40", "--out", str(tmp_path)]
    assert not has_runs(argv)  # no JSON yet
    data = {"train_size": 8, "val_size": 4, "source": "synthetic"}
    write_dataset("perov_5", [run(20000)], "longer", "machine", data, tmp_path)
    assert not has_runs(argv)
    write_dataset("perov_5", [run(4000)], "matrix", "machine", data, tmp_path)
    assert has_runs(argv)
    assert not has_runs(argv[:3] + ["0,1"] + argv[4:])  # seed 1 not yet


def test_runs_with_and_without_a_step_limit_share_a_page(tmp_path, capsys):
    # Their recipes differ in max_steps, None in one and a number in the other: ordering the runs (learning
    # curves) and the rows (figures) must not compare the two.
    from dataclasses import asdict

    from benchmarks.generative import write_dataset
    from benchmarks.harness.flow_matching import FlowConfig

    def run(max_steps):
        config = asdict(FlowConfig(seed=0, align_prior=True, max_steps=max_steps))
        return {"config": config, "epochs_run": 2, "parameters": 10, "steps": 20, "train_time": 6.0,
                "eval_time": 6.0, "curves": {"curve_epoch": []}, "metrics": {"2": {"match_rate": 0.5, "rmse": 0.1}}}

    data = {"train_size": 8, "val_size": 4, "source": "synthetic"}
    write_dataset("perov_5", [run(20)], "first", "machine", data, tmp_path)
    record = write_dataset("perov_5", [run(None)], "second", "machine", data, tmp_path)
    assert len(record["summary"]) == 2 and "max_steps=None" in (tmp_path / "generative_perov_5.md").read_text()
    assert "figures for perov_5 failed" not in capsys.readouterr().err


def test_the_comparison_page_sets_every_setting_against_independent_pairing(tmp_path):
    from benchmarks.generative_comparison import main
    from benchmarks.harness.report import RESULTS

    assert main(["--results", str(RESULTS / "generative"), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "generative_comparison.md").read_text()
    for section in ("## perov_5: 4000 steps", "## carbon_24: 4000 steps", "## mp_20_biternary: 4000 steps",
                    "## perov_5: 20 000 steps, two samplers"):
        assert section in page
    record = json.loads((tmp_path / "generative_comparison.json").read_text())
    first = record["datasets"]["perov_5"][0]
    assert first["coupling"] == "independent" and first["versus_independent"] == ""
    assert all(r["versus_independent"] for r in record["datasets"]["perov_5"][1:])
    # On Perov-5 every reduced form is an automorphism: the two couplings by coordinates train one network.
    same = {r["setting"]: r["same_as"] for r in record["datasets"]["perov_5"]}
    assert same["coupling among all reduced forms, ties by coordinates"] == \
        "coupling among automorphisms, ties by coordinates"
    assert sum(map(bool, same.values())) == 1
    assert [r["same_seeds"] for r in record["datasets"]["perov_5"] if r["same_as"]] == [[0]]
    assert not any(r["same_as"] for r in record["datasets"]["mp_20_biternary"])
    study = {(r["setting"], r["sampler"]): r for r in record["datasets"]["perov_5@20000"]}
    assert {r["same_as"] for r in study.values()} == {"", "coupling among automorphisms, ties by coordinates"}
    assert study["coupling among all reduced forms, ties by coordinates", "euler"]["same_seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path / "nothing here")])


def test_the_comparison_names_settings_that_trained_the_same_network_seed_by_seed():
    from benchmarks.generative_comparison import matrix_rows

    def run(coupling, seed, checksum):
        config = {"strategy": "mse", "basis": "niggli", "coupling": coupling, "align_prior": True, "seed": seed}
        metrics = {k: {"match_rate": 0.5, "rmse": 0.1, "lattice_error": 0.1} for k in ("10", "50", "200")}
        run = {"config": config, "metrics": metrics, "steps": 20, "train_time": 6.0, "eval_time": 6.0}
        return run if checksum is None else {**run, "state_checksum": checksum}

    runs = [run("independent", 0, 1.0), run("independent", 1, 2.0), run("independent", 2, None),
            run("automorphisms:random", 0, 1.0), run("automorphisms:random", 1, 5.0), run("automorphisms:random", 2, None),
            run("automorphisms", 0, 7.0), run("automorphisms", 1, 8.0)]
    rows = {r["coupling"]: r for r in matrix_rows("synthetic", runs)}
    # Seed 0 equal, seed 1 not, seed 2 without checksums: neither the same nor another network.
    assert (rows["automorphisms:random"]["same_as"], rows["automorphisms:random"]["same_seeds"],
            rows["automorphisms:random"]["other_seeds"]) == (rows["independent"]["setting"], [0], [1])
    assert rows["automorphisms"]["same_as"] == "" and rows["independent"]["same_as"] == ""


def test_the_cost_benchmark_times_the_variants_named(tmp_path):
    shared_data_file("perov_5")
    from benchmarks.generative_cost import main

    assert main(["--dataset", "perov_5", "--batch", "8", "--repeats", "2", "--hidden", "16", "--layers", "1",
                 "--variants", "mse/independent", "mse/automorphisms:random", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "generative_cost.json").read_text())
    assert [(r["loss"], r["coupling"]) for r in saved["rows"]] == [("mse", "independent"),
                                                                   ("mse", "automorphisms:random")]
    assert saved["rows"][0]["overhead_vs_mse"] == 0 and "first_step_s" in saved["rows"][1]
    assert saved["rows"][1]["parameters"] == saved["rows"][0]["parameters"]
    with pytest.raises(SystemExit):
        main(["--variants", "mse/nothing", "--out", str(tmp_path)])
