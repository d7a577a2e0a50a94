"""Model fitting for the training benchmarks: label bases, one guarded optimisation step, one ablation run.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular.

* :func:`guarded_step` is the training step of every benchmark that trains (:mod:`benchmarks.ablation`,
  :mod:`benchmarks.proxy_training`): a loss that raises, or a non-finite loss or gradient, skips the
  step instead of ending the run, and :class:`StepLog` counts what happened (the first exception is
  where an unguarded training loop would have crashed).
* :func:`epoch_labels` gives the training labels of one epoch in a label basis (:data:`BASES`).
* :func:`train_one` trains and evaluates one model of the ablation for one (strategy, label basis,
  seed); every strategy of a seed starts from the same weights and sees the same batches and bases.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from soft_niggli import CrystalBatch, LossResult, Status, get_loss, niggli_reduce, random_unimodular
from soft_niggli.lattice import random_rotations
from soft_niggli.metrics import evaluate, lattice_error

from .data import Data
from .models import build_model

__all__ = ["BASES", "STRATEGIES", "StepLog", "basis_skew", "epoch_labels", "guarded_step", "parse_strategy",
           "predict", "train_one"]

#: The ablation's default strategies (loss names of :func:`soft_niggli.get_loss`), in table order.
STRATEGIES = ("mse", "proxy-spglib", "proxy", "softmin", "gram")
#: Label bases: ``niggli`` (DiffCSP's canonical labels), ``raw`` (as stored), ``random`` (re-based each epoch).
BASES = ("niggli", "raw", "random")


def parse_strategy(spec: str) -> tuple[str, dict]:
    """``"name"`` or ``"name:key=value,key=value"`` → ``(name, options)``; values are read as JSON where
    they parse (numbers, ``true``/``false``), else kept as strings: ``"proxy:frame=prediction"``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"strategy {spec!r}: expected name:key=value[,key=value], got item {item!r}")
        if value in ("True", "False"):
            options[key] = value == "True"
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return name, options


# ----------------------------------------------------------------------------------------- labels


def epoch_labels(data: Data, basis: str, generator: torch.Generator, rotate: bool) -> CrystalBatch:
    """Training labels of one epoch in the label basis ``basis`` (:data:`BASES`).

    ``random``: each ``niggli`` label re-based by a fresh random unimodular matrix with entries bounded by
    2 (:func:`soft_niggli.random_unimodular`) at every call. With ``rotate`` the labels are also rotated
    by random proper rotations (:func:`soft_niggli.lattice.random_rotations`), ``L' = L Qᵀ``.
    """
    if basis == "niggli":
        labels = data.train_niggli
    elif basis == "raw":
        labels = data.train_raw
    elif basis == "random":
        n = len(data.train_niggli)
        M = random_unimodular((n,), max_entry=2, generator=generator).to(data.train_niggli.device)
        labels = data.train_niggli.apply_basis_change(M)
    else:
        raise ValueError(f"basis: expected one of {BASES}, got {basis!r}")
    if rotate:
        Q = random_rotations(len(labels), generator=generator, proper=True).to(labels.lattice)
        labels = CrystalBatch(labels.lattice @ Q.transpose(-1, -2), labels.frac, labels.num_atoms, labels.species)
    return labels


# ----------------------------------------------------------------------------------------- steps


def predict(model: torch.nn.Module, batch: CrystalBatch) -> CrystalBatch:
    """The model's crystals for the compositions of ``batch``, in ``batch``'s dtype."""
    L, F = model(batch)
    return CrystalBatch(L.to(batch.dtype), F.to(batch.dtype), batch.num_atoms, batch.species)


@dataclass
class StepLog:
    """What the guarded steps of one training run met; counts over steps, or crystals where so named.

    Attributes:
        steps: steps attempted. updates: steps that updated the weights.
        exception_steps: steps whose loss raised (skipped); ``exception_types`` by exception class;
            ``first_exception_step`` (1-based) and ``first_exception`` (type and message) of the first.
        nan_steps: steps with a non-finite loss or gradient (skipped).
        statuses: reducer statuses (:class:`soft_niggli.Status` names) of the predicted crystals of the
            updates, as the loss reports them. fallback, excluded: crystals of the updates that the
            loss's fallback handled, and that it left out. crystals: crystals of the updates.
        losses: the loss of every update.
    """

    steps: int = 0
    updates: int = 0
    exception_steps: int = 0
    nan_steps: int = 0
    exception_types: Counter = field(default_factory=Counter)
    first_exception_step: int | None = None
    first_exception: str | None = None
    statuses: Counter = field(default_factory=Counter)
    fallback: int = 0
    excluded: int = 0
    crystals: int = 0
    losses: list = field(default_factory=list)

    @property
    def non_ok_status(self) -> int:
        """Predicted crystals of the updates whose reducer status was not ``OK``."""
        return sum(v for k, v in self.statuses.items() if k != Status.OK.name)

    def note_exception(self, err: Exception) -> None:
        """Count a step whose loss raised ``err``."""
        self.exception_steps += 1
        self.exception_types[type(err).__name__] += 1
        if self.first_exception_step is None:
            self.first_exception_step, self.first_exception = self.steps, f"{type(err).__name__}: {str(err)[:300]}"

    def note_update(self, res: LossResult, crystals: int) -> None:
        """Count an update with the loss result ``res`` on ``crystals`` crystals."""
        self.updates += 1
        self.crystals += crystals
        for s in Status:
            self.statuses[s.name] += int((res.status == int(s)).sum())
        self.fallback += int(res.fallback.sum())
        self.excluded += int(res.excluded.sum())
        self.losses.append(float(res.loss.detach()))


def guarded_step(model: torch.nn.Module, loss_fn, target: CrystalBatch, optimiser: torch.optim.Optimizer,
                 log: StepLog, *, grad_clip: float = 0.0) -> LossResult | None:
    """One optimisation step on ``target`` that never ends the run; returns the loss's result, or None
    when the step was skipped (the loss raised, or the loss or a gradient is not finite).

    ``grad_clip > 0`` clips the gradient norm. Everything is counted in ``log``.
    """
    log.steps += 1
    try:
        pred = predict(model, target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = loss_fn(pred, target)
        if not bool(torch.isfinite(res.loss)):
            log.nan_steps += 1
            return None
        optimiser.zero_grad(set_to_none=True)
        res.loss.backward()
    except Exception as err:  # noqa: BLE001 - a loss that raises is a result, not a crash
        log.note_exception(err)
        return None
    if not all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None):
        log.nan_steps += 1
        return None
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimiser.step()
    log.note_update(res, len(target))
    return res


# --------------------------------------------------------------------------------------- one run


def basis_skew(lattice: torch.Tensor) -> float:
    """Median over crystals of ``‖L‖_F / ‖N L‖_F`` (>= 1; 1 when the emitted basis is already Niggli-reduced).

    A diagnostic of drift into skewed bases, measured with the guarded reducer on the crystals it
    reduces ``OK``. NaN when none does.
    """
    res = niggli_reduce(lattice.detach())
    ok = res.status == int(Status.OK)
    if not bool(ok.any()):
        return math.nan
    ratio = lattice.detach()[ok].flatten(1).norm(dim=1) / res.lattice[ok].flatten(1).norm(dim=1)
    return float(ratio.median())


def _val_diagnostics(model, data: Data) -> tuple[float, int, float]:
    model.eval()
    with torch.no_grad():
        pred = predict(model, data.val)
    model.train()
    err = lattice_error(pred.lattice, data.val.lattice)
    return float(err.error.mean()), int(err.failed.sum()), basis_skew(pred.lattice)


def train_one(data: Data, strategy: str, basis: str, model_name: str, seed: int, *, epochs: int, batch_size: int,
              lr: float, grad_clip: float, rotate: bool, loss_options: dict, match: bool, device: torch.device,
              progress=None) -> dict:
    """Train and evaluate one model; returns the run's record (config, stability counts, curves, metrics).

    ``strategy`` is a :func:`parse_strategy` spec; its options override ``loss_options``. ``progress``
    (a tqdm bar or None) advances by one per epoch.
    """
    torch.manual_seed(seed)  # same initial weights for every strategy and basis of a seed
    model = build_model(model_name, max_atoms=data.max_atoms, volume_per_atom=data.volume_per_atom).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    name, spec_options = parse_strategy(strategy)
    loss_fn = get_loss(name, **{**loss_options, **spec_options})
    order_gen = torch.Generator().manual_seed(10_000 + seed)  # batch order: same for every strategy
    basis_gen = torch.Generator().manual_seed(20_000 + seed)  # random bases: same for every strategy

    n = len(data.train_raw)
    log = StepLog()
    curves = {"epoch": [], "train_loss": [], "train_terms": [], "val_lattice_error": [], "val_lattice_failures": [],
              "val_basis_skew": [], "exceptions": [], "epoch_time": []}

    def record(epoch, loss, terms, exceptions, dt):
        err, fail, skew = _val_diagnostics(model, data)
        for k, v in (("epoch", epoch), ("train_loss", loss), ("train_terms", terms), ("val_lattice_error", err),
                     ("val_lattice_failures", fail), ("val_basis_skew", skew), ("exceptions", exceptions),
                     ("epoch_time", dt)):
            curves[k].append(v)
        return err

    record(0, None, {}, 0, 0.0)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        labels = epoch_labels(data, basis, basis_gen, rotate)
        perm = torch.randperm(n, generator=order_gen).to(device)
        updates, exceptions, term_sums = log.updates, log.exception_steps, Counter()
        for start in range(0, n, batch_size):
            res = guarded_step(model, loss_fn, labels[perm[start:start + batch_size]], opt, log, grad_clip=grad_clip)
            if res is not None:
                for k, v in res.terms.items():
                    term_sums[k] += float(v.detach().mean())
        dt = time.perf_counter() - t0
        losses = log.losses[updates:]
        terms = {k: v / len(losses) for k, v in term_sums.items()} if losses else {}
        err = record(epoch, float(np.mean(losses)) if losses else None, terms, log.exception_steps - exceptions, dt)
        if progress is not None:
            progress.set_postfix_str(f"{strategy}/{basis}/s{seed} ep {epoch} val err {err:.3f}", refresh=False)
            progress.update(1)

    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        pred = predict(model, data.val)
    metrics = evaluate(pred, data.val, match=match)
    eval_time = time.perf_counter() - t0
    return {
        "dataset": data.name, "model": model_name, "strategy": strategy, "basis": basis, "seed": seed,
        "rotate": rotate, "epochs": epochs, "batch_size": batch_size, "lr": lr, "grad_clip": grad_clip,
        "train_size": n, "val_size": len(data.val), "loss": repr(loss_fn),
        "steps": log.steps, "updates": log.updates, "exception_steps": log.exception_steps,
        "first_exception_step": log.first_exception_step, "first_exception": log.first_exception,
        "exception_types": dict(log.exception_types), "nan_steps": log.nan_steps,
        "non_ok_status": log.non_ok_status, "fallback": log.fallback, "excluded": log.excluded,
        "crystals_seen": log.crystals,
        "time_per_epoch": float(np.mean(curves["epoch_time"][1:])) if epochs else 0.0,
        "eval_time": eval_time, "basis_skew": basis_skew(pred.lattice), "metrics": metrics, "curves": curves,
    }
