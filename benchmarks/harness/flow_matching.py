"""Flow matching for crystal structure prediction (FlowMM / CrystalFlow style) with any soft_niggli loss.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular; a rotation is ``L' = L Qᵀ``.

**Prior** (:class:`LatticePrior`): ``L_0`` has i.i.d. Gaussian entries ``N(0, σ_b²)`` with
``σ_b = c · (v̄ n_b)^{1/3}`` (``v̄`` the training labels' mean volume per atom, ``n_b`` the atom count):
``c`` is fitted once so that ``E‖L_0‖²_F = mean ‖L_1‖²_F`` over the (Niggli) training labels, measured in
units of ``(v̄ n)^{2/3}``; ``f_0 ~ U[0, 1)³`` per atom. With ``align_prior`` (training) ``L_0`` is replaced
by ``L_0 R`` with ``R`` the orthogonal matrix nearest in Frobenius norm (Kabsch) that also gives
``det(L_0 R)`` the sign of ``det L_1`` (:func:`align_rotation`); at sampling time, with no ``L_1``, a
``L_0`` of negative determinant is mirrored (:meth:`LatticePrior.sample` with ``right_handed``). The network
sees only the Gram matrix and cannot tell a basis from its mirror image: without alignment, half of the
independent pairs interpolate through singular lattices (det changes sign).

**Interpolant**: ``L_t = (1 − t) L_0 + t L_1``, ``f_t = wrap(f_0 + t · mi(f_1 − f_0))`` with
``mi(d) = d − round(d)`` the minimum image; ``t ~ U[0, 1)`` per crystal.

**Coupling** (which basis of the label is the target): ``"independent"`` uses the label as given (in the
run's label basis, :func:`benchmarks.harness.training.epoch_labels`); ``"automorphisms"`` and ``"reduced-forms"``
re-express every label in the one of its equally-canonical reduced forms nearest its prior sample
(:func:`soft_niggli.flow.couple_reduced_forms` with that ``among``: forms with the label's metric, or all
forms; Frobenius distance, or after the Kabsch rotation with ``align_prior``; ties by the prior's
fractional coordinates, or drawn at random for ``"automorphisms:random"`` and ``"reduced-forms:random"``,
its ``ties="random"``), so the target never leaves the Niggli cone but follows the prior where the label
has several reduced bases.

**Training** (x₁-prediction): the network maps ``(L_t, f_t, t, species)`` to ``(L̂_1, f̂_1)``, and the
loss is any registered strategy, ``get_loss(name, **options)(predicted_clean, label)`` on two
:class:`~soft_niggli.CrystalBatch`; its per-crystal values are weighted by
``w(t) = 1 / max(1 − t, t_floor)²`` (a clipped velocity-space loss) and normalised,
``Σ w_b ℓ_b / Σ w_b`` over the crystals the loss did not exclude. Adam at a constant rate, or a cosine
decay to 0 over the run (``lr_schedule``); with ``ema > 0`` sampling uses an exponential moving average
of the weights; with ``jump_at < 1`` the sampler lands on the prediction made at that time, with
``anneal > 0`` it speeds the coordinates up as ``1 + anneal · t`` (:func:`sample`).

**Sampling** (:func:`sample`): the velocity implied by the prediction,

    v_L = (L̂_1 − L_t) / (1 − t),      v_f = mi(f̂_1 − f_t) / (1 − t),

integrated by Euler from ``t = 0`` to 1 on ``steps`` equal steps, ``L ← L + Δt v_L``,
``f ← wrap(f + Δt v_f)``; the last step (``Δt = 1 − t``) lands exactly on the prediction. An exact
prediction ``(L_1, f_1)`` reproduces the interpolant at every step, for any number of steps (tested).

**Distributed training** (:func:`train_flow`): when launched by ``torchrun`` (``WORLD_SIZE > 1``) the
process group is initialised with gloo, the model is wrapped in ``DistributedDataParallel``, and each
global batch (the same permutation on every rank, as ``DistributedSampler`` would give with
``num_replicas`` ranks and a per-rank batch of ``batch_size / world``) is split between the ranks by
crystal, ``rank::world``. The prior noise and times of the global batch are drawn on every rank from one
shared generator before the split, and the loss is normalised by the global ``Σ w``, so the update equals
a single process's on the same global batch (tested). Only rank 0 evaluates and writes.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from soft_niggli import CrystalBatch, ReducedFormsCache, Status, get_loss, niggli_reduce
from soft_niggli.flow import align_rotation, couple_reduced_forms
from soft_niggli.lattice import wrap
from soft_niggli.losses.periodic import minimum_image
from soft_niggli.metrics import evaluate, spglib_niggli_g6

from .data import Data
from .flow_model import FlowNet
from .models import import_object
from .training import epoch_labels, parse_strategy

__all__ = ["COUPLINGS", "LR_SCHEDULES", "FlowConfig", "LatticePrior", "distributed_context", "evaluate_samples", "flow_loss",
           "interpolate", "sample", "train_flow"]

#: ``"independent"``: the label as given; the others: :func:`soft_niggli.flow.couple_reduced_forms` with
#: ``among`` set to the coupling's name, and ``ties="random"`` after a ``:random``.
COUPLINGS = ("independent", "automorphisms", "reduced-forms", "automorphisms:random", "reduced-forms:random")


# ------------------------------------------------------------------------------------------ prior


class LatticePrior:
    """Gaussian lattice prior ``L_0 ~ N(0, σ_b²)`` entry-wise, ``σ_b = c (v̄ n_b)^{1/3}`` (module docstring)."""

    def __init__(self, volume_per_atom: float, c: float):
        self.volume_per_atom, self.c = float(volume_per_atom), float(c)

    @classmethod
    def fit(cls, labels: CrystalBatch, volume_per_atom: float) -> LatticePrior:
        """``c² = mean_b ‖L_b‖²_F / (9 (v̄ n_b)^{2/3})`` over the labels (e.g. the Niggli training labels)."""
        scale2 = (volume_per_atom * labels.num_atoms.double().clamp_min(1)).pow(2.0 / 3.0)
        c2 = (labels.lattice.double().square().sum((-1, -2)) / (9 * scale2)).mean()
        return cls(volume_per_atom, float(c2.sqrt()))

    def sigma(self, num_atoms: torch.Tensor) -> torch.Tensor:
        return self.c * (self.volume_per_atom * num_atoms.double().clamp_min(1)).pow(1.0 / 3.0)

    def sample(self, num_atoms: torch.Tensor, generator: torch.Generator, right_handed: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_0 (B, 3, 3), f_0 (N, 3))`` in float64 on the CPU; ``right_handed`` mirrors a ``L_0`` of
        negative determinant (its last Cartesian axis)."""
        num_atoms = num_atoms.cpu()
        B = len(num_atoms)
        L0 = torch.randn(B, 3, 3, generator=generator, dtype=torch.float64) * self.sigma(num_atoms)[:, None, None]
        f0 = torch.rand(int(num_atoms.sum()), 3, generator=generator, dtype=torch.float64)
        if right_handed:
            flip = torch.where(torch.linalg.det(L0) < 0, -1.0, 1.0).to(torch.float64)
            L0 = torch.cat([L0[..., :2], L0[..., 2:] * flip[:, None, None]], dim=-1)
        return L0, f0


def interpolate(L0, f0, L1, f1, t, batch):
    """``L_t = (1 − t) L_0 + t L_1``, ``f_t = wrap(f_0 + t · mi(f_1 − f_0))`` (``t (B,)``, ``batch (N,)``)."""
    tl = t[:, None, None]
    Lt = (1 - tl) * L0 + tl * L1
    ft = wrap(f0 + t[batch][:, None] * minimum_image(f1 - f0))
    return Lt, ft


# ------------------------------------------------------------------------------------------ config


@dataclass
class FlowConfig:
    """One flow-matching run (what :mod:`benchmarks.generative` varies, and the fixed settings)."""

    strategy: str = "mse"
    basis: str = "niggli"
    coupling: str = "independent"
    align_prior: bool = False
    seed: int = 0
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    grad_clip: float = 5.0
    t_floor: float = 0.1
    coord_weight: float = 10.0
    hidden: int = 96
    layers: int = 3
    fourier: int = 8
    ode_steps: tuple = (10, 50, 200)
    eval_every: int = 0
    curve_size: int = 100
    curve_steps: int = 20
    max_steps: int | None = None
    loss_options: dict = field(default_factory=dict)
    model: str = ""
    ema: float = 0.0
    lr_schedule: str = "constant"
    jump_at: float = 1.0
    anneal: float = 0.0


def build_model(config: FlowConfig, volume_per_atom: float) -> torch.nn.Module:
    """The flow network: :class:`~benchmarks.harness.flow_model.FlowNet`, or ``config.model``
    (``"package.module:Class"``).

    A model of your own is built as ``Class(volume_per_atom=v, hidden=h, layers=l, fourier=f)`` (the
    training set's mean volume per atom in Å³ and the run's size options; accept ``**kwargs`` to ignore
    them) and called as ``model(lattice_t, frac_t, t, species, num_atoms)`` with ``lattice_t (B, 3, 3)``
    (rows are lattice vectors), ``frac_t (N, 3)``, ``t (B,)`` in [0, 1), ``species (N,)`` int64 atomic
    numbers and ``num_atoms (B,)`` (atoms grouped by crystal, in order); it returns the predicted clean
    crystal ``(lattice_1 (B, 3, 3), frac_1 (N, 3))``, float tensors on the input's device.
    """
    if not config.model:
        return FlowNet(volume_per_atom, hidden=config.hidden, layers=config.layers, fourier=config.fourier)
    cls = import_object(config.model)
    return cls(volume_per_atom=volume_per_atom, hidden=config.hidden, layers=config.layers, fourier=config.fourier)


def build_loss(config: FlowConfig):
    """``get_loss(name, coord_weight=config.coord_weight, **options)``; the strategy spec's options win."""
    name, spec = parse_strategy(config.strategy)
    options = {"coord_weight": config.coord_weight, **config.loss_options, **spec}
    return get_loss(name, **options)


# -------------------------------------------------------------------------------------- distributed


@dataclass
class DistributedContext:
    rank: int = 0
    world: int = 1
    initialised_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def barrier(self):
        if self.active:
            dist.barrier()

    def close(self):
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def distributed_context() -> DistributedContext:
    """Initialise gloo when launched by ``torchrun`` with ``WORLD_SIZE > 1`` (or join an initialised group);
    else a single-process context."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available():
        dist.init_process_group("gloo")
        return DistributedContext(dist.get_rank(), dist.get_world_size(), True)
    return DistributedContext()


# ------------------------------------------------------------------------------------------ loss


def flow_loss(model, loss_fn, labels: CrystalBatch, L0: torch.Tensor, f0: torch.Tensor, t: torch.Tensor,
              config: FlowConfig, ctx: DistributedContext, cache: ReducedFormsCache | None = None,
              dtype=torch.float32, tie_generator: torch.Generator | None = None):
    """One step's loss on this rank's crystals ``labels`` (with their noise ``L0, f0, t``).

    Returns ``(loss to backpropagate, global loss value (float), LossResult)``: the backpropagated value is
    ``world · Σ_local w ℓ / Σ_global w``, so DDP's gradient average is the gradient of the global
    ``Σ w ℓ / Σ w``.
    """
    if config.coupling != "independent":
        among, _, ties = config.coupling.partition(":")
        labels = couple_reduced_forms(L0, labels, prior_frac=f0, among=among, align=config.align_prior,
                                      ties=ties or "coordinates", generator=tie_generator, cache=cache).batch
    if config.align_prior:
        L0 = align_rotation(L0, labels.lattice.double().cpu()).to(L0)
    labels = labels.to(dtype=dtype)
    device = labels.device
    L1, f1 = labels.lattice, labels.frac
    Lt, ft = interpolate(L0.to(device, dtype), f0.to(device, dtype), L1, f1, t.to(device, dtype), labels.batch)
    L_hat, f_hat = model(Lt, ft, t.to(device, dtype), labels.species, labels.num_atoms)
    pred = CrystalBatch(L_hat, f_hat, labels.num_atoms, labels.species)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = loss_fn(pred, labels)
    w = 1.0 / (1.0 - t.to(device, dtype)).clamp_min(config.t_floor).square()
    w = w * (~res.excluded).to(dtype)
    local = (w * res.per_crystal).sum()
    sums = ctx.all_sum(torch.stack([local.detach(), w.sum()]).double())
    wsum = sums[1].clamp_min(1e-12)
    return local * (ctx.world / wsum.to(dtype)), float(sums[0] / wsum), res


# ---------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(model, num_atoms: torch.Tensor, species: torch.Tensor, steps: int, prior: LatticePrior,
           generator: torch.Generator, *, right_handed: bool = False, chunk: int = 512,
           dtype=torch.float32, device="cpu", return_prior: bool = False, predictor=None,
           jump_at: float = 1.0, anneal: float = 0.0) -> CrystalBatch:
    """One crystal per composition, by Euler integration of the predicted velocity (module docstring).

    ``num_atoms (B,)``, ``species (N,)`` give the compositions. ``predictor(L_t, f_t, t, species, num_atoms)``
    replaces the model where given (tests: an exact predictor). Returns the crystals in float64 on the
    CPU (with the prior sample ``(L_0, f_0)`` too if ``return_prior``).

    Two variants of the sampler (:mod:`benchmarks.sampler_study` compares them): ``jump_at < 1`` takes
    ``steps − 1`` equal steps from 0 to ``jump_at`` and then lands on the prediction made there (one step,
    or ``jump_at = 1 − 1/steps``, is plain Euler); ``anneal = s > 0`` scales the coordinates' velocity by
    ``1 + s t`` (FlowMM's inference anti-annealing), a step never passing the prediction.
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if not 0 < jump_at <= 1 or anneal < 0:
        raise ValueError(f"jump_at: expected in (0, 1], anneal >= 0; got {jump_at}, {anneal}")
    if jump_at < 1 and steps > 1:  # one step is a jump from t = 0 already
        knots = [jump_at * k / (steps - 1) for k in range(steps)] + [1.0]
    else:
        knots = [k / steps for k in range(steps + 1)]
    num_atoms = num_atoms.cpu()
    species = species.cpu()
    L0, f0 = prior.sample(num_atoms, generator, right_handed=right_handed)
    was_training = getattr(model, "training", False)
    if model is not None:
        model.eval()
    predictor = predictor or model
    ptr = torch.cat([num_atoms.new_zeros(1), torch.cumsum(num_atoms, 0)])
    out_L, out_f = [], []
    for lo in range(0, len(num_atoms), chunk):
        hi = min(lo + chunk, len(num_atoms))
        a, b = int(ptr[lo]), int(ptr[hi])
        n = num_atoms[lo:hi].to(device)
        z = species[a:b].to(device)
        L = L0[lo:hi].to(device, dtype)
        f = f0[a:b].to(device, dtype)
        for t0, t1 in zip(knots[:-1], knots[1:]):
            t = torch.full((hi - lo,), t0, dtype=dtype, device=device)
            L_hat, f_hat = predictor(L, f, t, z, n)
            dt = (t1 - t0) / (1 - t0)
            L = L + dt * (L_hat - L)                                   # Δt · v_L
            f = wrap(f + min(1.0, (1 + anneal * t0) * dt) * minimum_image(f_hat - f))  # Δt · v_f
        out_L.append(L.double().cpu())
        out_f.append(f.double().cpu())
    if model is not None and was_training:
        model.train()
    crystals = CrystalBatch(torch.cat(out_L), torch.cat(out_f), num_atoms, species)
    return (crystals, (L0, f0)) if return_prior else crystals


def evaluate_samples(pred: CrystalBatch, target: CrystalBatch, match: bool = True) -> dict:
    """DiffCSP's metrics (:func:`soft_niggli.metrics.evaluate`: match rate, RMSE, lattice error) plus the
    share of generated lattices the library's reducer reduces ``OK`` and the number spglib fails on."""
    finite = torch.isfinite(pred.lattice).flatten(1).all(1)
    safe = torch.where(finite[:, None, None], pred.lattice, torch.eye(3, dtype=pred.lattice.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = niggli_reduce(safe).status
        ok = (status == int(Status.OK)) & finite
        spg = spglib_niggli_g6(pred.lattice).ok
        out = evaluate(pred, target, match=match)
    out["reducer_ok_share"] = float(ok.double().mean())
    out["spglib_failures"] = float((~spg).sum())
    L = pred.lattice[finite]
    out["volume_ratio_median"] = float((torch.linalg.det(L).abs() / torch.linalg.det(target.lattice[finite]).abs())
                                       .median()) if len(L) else math.nan
    out["left_handed_share"] = float((torch.linalg.det(L) < 0).double().mean()) if len(L) else math.nan
    return out


# ---------------------------------------------------------------------------------------- training

#: ``"constant"``: ``lr`` throughout; ``"cosine"``: ``lr · (1 + cos(π s / S)) / 2`` at step ``s`` of ``S``.
LR_SCHEDULES = ("constant", "cosine")


def train_flow(data: Data, config: FlowConfig, *, device="cpu", ctx: DistributedContext | None = None,
               progress=None, eval_subset: int | None = None, match: bool = True, log_every: int = 0) -> dict:
    """Train one flow model and evaluate it on ``data.val``; returns the run's record.

    The record holds the config, the loss curve (mean per epoch), the match-rate-vs-epoch curve (every
    ``config.eval_every`` epochs on the first ``config.curve_size`` held-out crystals with
    ``config.curve_steps`` Euler steps; rank 0), and the final metrics at each of ``config.ode_steps``
    (rank 0; other ranks return the record without metrics). ``progress`` (tqdm or None) advances by one
    per step. ``eval_subset``: evaluate on the first that many held-out crystals only.
    """
    ctx = ctx or DistributedContext()
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_model(config, data.volume_per_atom).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    net = model
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    # Sampling uses an exponential moving average of the weights when config.ema > 0 (as diffusion and
    # flow models usually do): the last iterate of a constant-rate Adam run is noisy, its average is not.
    ema_model = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        config.ema), use_buffers=True) if config.ema > 0 else None)
    sampler = ema_model if ema_model is not None else model
    loss_fn = build_loss(config)
    prior = LatticePrior.fit(data.train_niggli, data.volume_per_atom)
    order_gen = torch.Generator().manual_seed(10_000 + config.seed)
    basis_gen = torch.Generator().manual_seed(20_000 + config.seed)
    noise_gen = torch.Generator().manual_seed(30_000 + config.seed)
    tie_gen = torch.Generator().manual_seed(40_000 + config.seed + 1_000 * ctx.rank)
    n = len(data.train_niggli)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if config.lr_schedule == "cosine" else None

    val = data.val if eval_subset is None else data.val[: min(eval_subset, len(data.val))]
    curve_val = data.val[: min(config.curve_size, len(data.val))]
    curves = {"epoch": [], "train_loss": [], "curve_epoch": [], "curve_step": [], "curve_match_rate": [],
              "curve_rmse": [], "curve_lattice_error": [], "epoch_time": []}
    cache = ReducedFormsCache()  # each label's forms, found once per run
    step = skipped = 0
    done = False
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        labels = epoch_labels(data, config.basis, basis_gen, rotate=False)
        perm = torch.randperm(n, generator=order_gen)
        losses = []
        for lo in range(0, n, config.batch_size):
            idx = perm[lo:lo + config.batch_size]
            if len(idx) < ctx.world:
                continue
            glob = labels[idx]
            # Noise of the whole global batch, drawn identically on every rank, then this rank's share.
            t = torch.rand(len(idx), generator=noise_gen, dtype=torch.float64)
            L0, f0 = prior.sample(glob.num_atoms, noise_gen)
            mine = torch.arange(ctx.rank, len(idx), ctx.world)
            local = glob[mine]
            atom_mask = torch.zeros(len(idx), dtype=torch.bool)
            atom_mask[mine] = True
            f0_local = f0[atom_mask[glob.batch.cpu()]]
            loss, value, _ = flow_loss(net, loss_fn, local.to(device), L0[mine], f0_local, t[mine], config, ctx,
                                       cache, tie_generator=tie_gen)
            step += 1
            if not math.isfinite(value):
                skipped += 1
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grads_ok = torch.tensor(float(all(bool(torch.isfinite(p.grad).all())
                                                  for p in net.parameters() if p.grad is not None)))
                if float(ctx.all_sum(grads_ok)) == ctx.world:
                    if config.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
                    opt.step()
                    if schedule is not None:
                        schedule.step()
                    if ema_model is not None:
                        ema_model.update_parameters(model)
                    losses.append(value)
                else:
                    skipped += 1
            if progress is not None:
                progress.update(1)
            if log_every and step % log_every == 0 and ctx.rank == 0:
                print(f"step {step} loss {value:.4f}", flush=True)
            if step >= total_steps:
                done = True
                break
        curves["epoch"].append(epoch)
        curves["train_loss"].append(float(np.mean(losses)) if losses else None)
        curves["epoch_time"].append(time.perf_counter() - t0)
        if progress is not None:
            progress.set_postfix_str(f"{config.strategy}/{config.basis}/{config.coupling}/s{config.seed} ep {epoch} "
                                     f"loss {curves['train_loss'][-1] or float('nan'):.3f}", refresh=False)
        last = done or epoch == config.epochs
        if config.eval_every and (epoch % config.eval_every == 0 or last) and match:
            if ctx.rank == 0:
                gen = torch.Generator().manual_seed(40_000 + config.seed)
                crystals = sample(sampler, curve_val.num_atoms, curve_val.species, config.curve_steps, prior, gen,
                                  right_handed=config.align_prior, device=device,
                                  jump_at=config.jump_at, anneal=config.anneal)
                m = evaluate_samples(crystals, curve_val, match=True)
                curves["curve_epoch"].append(epoch)
                curves["curve_step"].append(step)
                curves["curve_match_rate"].append(m["match_rate"])
                curves["curve_rmse"].append(m["rmse"])
                curves["curve_lattice_error"].append(m["lattice_error"])
            ctx.barrier()
        if done:
            break
    train_time = time.perf_counter() - t_start

    record = {"config": asdict(config), "parameters": n_params, "steps": step, "skipped_steps": skipped,
              "epochs_run": len(curves["epoch"]), "train_size": n, "val_size": len(val), "world_size": ctx.world,
              "prior_c": prior.c, "loss": repr(loss_fn), "train_time": train_time, "curves": curves,
              "metrics": {}}
    record["config"]["ode_steps"] = list(config.ode_steps)
    if ctx.rank == 0:
        t_eval = time.perf_counter()
        for k in config.ode_steps:
            gen = torch.Generator().manual_seed(50_000 + config.seed)
            crystals = sample(sampler, val.num_atoms, val.species, int(k), prior, gen,
                              right_handed=config.align_prior, device=device,
                              jump_at=config.jump_at, anneal=config.anneal)
            record["metrics"][str(int(k))] = evaluate_samples(crystals, val, match=match)
        record["eval_time"] = time.perf_counter() - t_eval
    record["state_checksum"] = float(sum(p.detach().double().sum() for p in model.parameters()))
    record["model"] = sampler
    ctx.barrier()
    return record
