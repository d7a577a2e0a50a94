"""Packaging: entry-point losses, the installed layout (soft_niggli.baselines), the wheel, metadata,
and the warning when the compiled kernel is missing."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import soft_niggli
from soft_niggli import CrystalBatch, CrystalLoss, available_losses, get_loss

ROOT = Path(__file__).resolve().parents[1]
GROUP = "soft_niggli.losses"


def _small_batches():
    lattice = torch.tensor([[[4.0, 0, 0], [0, 4, 0], [0, 0, 5]], [[3.0, 0, 0], [1, 3, 0], [0, 0, 6]]],
                           dtype=torch.float64)
    frac = torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64)
    target = CrystalBatch(lattice, frac, [2, 1], species=[11, 17, 6])
    pred = CrystalBatch((lattice * 1.02).requires_grad_(), frac + 0.01, [2, 1], species=[11, 17, 6])
    return pred, target


# ---------------------------------------------------------------------------------- entry points

TOY_MODULE = '''
import torch

from soft_niggli import CrystalLoss, LossResult


class ToyLoss(CrystalLoss):
    """Squared difference of the cell volumes (a basis-invariant toy)."""

    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def compute(self, pred, target):
        volume = lambda batch: torch.linalg.det(batch.lattice).abs()
        per_crystal = self.weight * (volume(pred) - volume(target)) ** 2
        none = torch.zeros(len(pred), dtype=torch.bool, device=pred.device)
        return LossResult(loss=per_crystal.mean(), per_crystal=per_crystal,
                          terms={"lattice": per_crystal, "coords": torch.zeros_like(per_crystal)},
                          status=torch.zeros(len(pred), dtype=torch.int64, device=pred.device),
                          excluded=none, fallback=none)
'''


def _install_toy_distribution(tmp_path, monkeypatch, loss_name: str):
    """A distribution 'toy-loss-pkg' on sys.path declaring ``ToyLoss`` as the entry point ``loss_name``;
    whatever registering it changes in the loss registry is undone afterwards."""
    (tmp_path / "toy_loss_pkg.py").write_text(TOY_MODULE, encoding="utf-8")
    info = tmp_path / "toy_loss_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-loss-pkg\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{loss_name} = toy_loss_pkg:ToyLoss\n", encoding="utf-8")
    registry_module = sys.modules[get_loss.__module__]
    if isinstance(getattr(registry_module, "_REGISTRY", None), dict):  # keep "toy-loss" out of other tests
        monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def toy_distribution(tmp_path, monkeypatch):
    """The toy distribution declaring the loss 'toy-loss'."""
    _install_toy_distribution(tmp_path, monkeypatch, "toy-loss")
    yield tmp_path
    sys.modules.pop("toy_loss_pkg", None)


@pytest.fixture(params=["proxy", "mse", "softmin"])
def shadowing_distribution(request, tmp_path, monkeypatch):
    """The toy distribution declaring its loss under the name of a built-in one; returns that name."""
    _install_toy_distribution(tmp_path, monkeypatch, request.param)
    yield request.param
    sys.modules.pop("toy_loss_pkg", None)


def test_a_loss_declared_by_another_distribution_is_listed_and_built(toy_distribution):
    assert "toy_loss_pkg" not in sys.modules
    names = available_losses()
    assert "toy-loss" in names and list(names) == sorted(names)
    assert "toy_loss_pkg" not in sys.modules  # listing does not import it

    loss_fn = get_loss("toy-loss", weight=2.0)
    assert type(loss_fn).__name__ == "ToyLoss" and type(loss_fn).__module__ == "toy_loss_pkg"
    assert isinstance(loss_fn, CrystalLoss) and loss_fn.weight == 2.0
    pred, target = _small_batches()
    result = loss_fn(pred, target)
    result.loss.backward()
    assert result.per_crystal.shape == (2,) and torch.isfinite(result.loss) and result.loss > 0
    assert torch.isfinite(pred.lattice.grad).all()
    with pytest.raises(ValueError, match="weigth"):
        get_loss("toy-loss", weigth=1.0)


def test_an_entry_point_named_like_a_builtin_loss_warns_naming_both_and_the_builtin_keeps_the_name(
        shadowing_distribution):
    import soft_niggli.losses.registry as registry

    name = shadowing_distribution
    builtin = type(get_loss(name))
    expected = rf"entry point {name} = 'toy_loss_pkg:ToyLoss' of the distribution 'toy-loss-pkg'.*" \
               rf"loss '{name}'.*{builtin.__module__}\.{builtin.__qualname__}"
    with pytest.warns(UserWarning, match=expected):
        names = available_losses()
    assert names.count(name) == 1
    # get_loss of a registered name reads the entry points on its first call in a process.
    registry._check_entry_points_once.cache_clear()
    with pytest.warns(UserWarning, match=expected):
        built = get_loss(name)
    assert type(built) is builtin
    assert "toy_loss_pkg" not in sys.modules  # the shadowed plugin is never imported


def test_an_entry_point_of_the_registered_class_itself_does_not_warn():
    import warnings

    import soft_niggli.losses.registry as registry

    get_loss("proxy-spglib")  # registered now, under the class its entry point names
    registry._check_entry_points_once.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "proxy-spglib" in available_losses()
        get_loss("proxy-spglib")
        get_loss("proxy")


def test_proxy_spglib_is_an_entry_point_of_this_distribution():
    declared = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=GROUP)}
    assert declared.get("proxy-spglib") == "soft_niggli.baselines.spglib_proxy:SpglibProxyLoss", (
        "the installed metadata lacks the entry point: reinstall (pip install -e .), and remove any stale "
        "soft_niggli.egg-info folder in the working directory, which shadows it")
    assert "proxy-spglib" in available_losses()
    loss_fn = get_loss("proxy-spglib")
    assert type(loss_fn).__name__ == "SpglibProxyLoss"
    assert type(loss_fn).__module__ == "soft_niggli.baselines.spglib_proxy"
    pred, target = _small_batches()
    result = loss_fn(pred, target)
    assert torch.isfinite(result.loss) and result.per_crystal.shape == (2,)


def test_baselines_are_a_subpackage_on_disk_as_installed():
    import soft_niggli.baselines as baselines
    from soft_niggli.baselines.reducers import PEER_REDUCERS, reduce_with

    assert baselines.reduce_with is reduce_with and "spglib" in PEER_REDUCERS
    assert reduce_with("spglib", [[[4.0, 0, 0], [4, 4, 0], [0, 0, 5]]])[0].outcome == "ok"
    # The tree shows what installs: the folder sits inside the package, with no mapping in setup.py (a
    # top-level `baselines` would also clash with an unrelated package of that name).
    assert Path(baselines.__file__).resolve().parent == Path(soft_niggli.__file__).resolve().parent / "baselines"
    assert "package_dir" not in (ROOT / "setup.py").read_text(encoding="utf-8")


_MOVED_NAMES = textwrap.dedent("""
    import importlib, warnings

    moved = [  # (module, name, where it lives)
        ("soft_niggli.losses.candidates", "softmin", "soft_niggli.losses.candidates.soft_minimum"),
        ("soft_niggli.losses.candidates", "window_candidates", "soft_niggli.losses.windows.window_candidates"),
        ("soft_niggli.losses.candidates", "grouped_window_candidates",
         "soft_niggli.losses.windows.grouped_window_candidates"),
        ("soft_niggli.losses.candidates", "WindowMargin", "soft_niggli.losses.windows.WindowMargin"),
        ("soft_niggli.losses.softmin", "GramLoss", "soft_niggli.losses.gram.GramLoss"),
        ("soft_niggli.losses.softmin", "packed_softmin", "soft_niggli.losses._packed.packed_soft_minimum"),
    ]
    for module, name, place in moved:
        path, attribute = place.rsplit(".", 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = getattr(importlib.import_module(module), name)
            again = getattr(importlib.import_module(module), name)
            exec(f"from {module} import {name} as third")
        assert first is again is third is getattr(importlib.import_module(path), attribute), name
        messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert messages == [f"{module}.{name} is {place}: import it from there"], messages
        # The warning points at the line that asked for the name, not at soft_niggli.
        assert all(w.filename == "<string>" for w in caught if issubclass(w.category, DeprecationWarning))
    try:
        importlib.import_module("soft_niggli.losses.candidates").no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name was found")
    print("OK")
""")


def test_moved_names_are_found_where_they_live_and_warn_once_naming_that_place():
    # A fresh interpreter: each name warns only on its first lookup in a process.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(soft_niggli.__file__).resolve().parents[1]),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", _MOVED_NAMES], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr


def test_version_is_defined_once_and_metadata_is_complete():
    meta = importlib.metadata.metadata("soft-niggli")
    hint = ("installed metadata out of date: reinstall (pip install -e .), and remove any stale "
            "soft_niggli.egg-info folder in the working directory, which shadows it")
    assert meta["Version"] == soft_niggli.__version__, hint
    assert meta["Author"] == "soft_niggli developers", hint
    assert meta["License-Expression"] == "MIT"
    urls = dict(entry.split(", ", 1) for entry in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues"} <= set(urls)
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- wheel

_SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "soft_niggli")


def _setuptools_for_build() -> None:
    """Skip unless this environment can build the wheel offline (no build isolation)."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed: cannot build the wheel without build isolation")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pyproject.toml's build requirement)")


def _clean_copy(tmp_path) -> Path:
    """The sources a build reads, copied without build outputs: an in-tree build/ folder can hold stale
    files that a wheel would pick up."""
    src = tmp_path / "src"
    src.mkdir()
    for name in _SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    return src


def test_wheel_holds_only_soft_niggli_and_its_dist_info(tmp_path):
    _setuptools_for_build()
    src = _clean_copy(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert out.returncode == 0, f"pip wheel failed:\n{out.stdout}\n{out.stderr}"
    (wheel,) = (tmp_path / "dist").glob("soft_niggli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"soft_niggli-{soft_niggli.__version__}.dist-info"
        assert {n.split("/", 1)[0] for n in names} == {"soft_niggli", dist_info}
        for module in ("__init__.py", "reducers.py", "spglib_proxy.py"):
            assert f"soft_niggli/baselines/{module}" in names
        packages = {str(p.parent.relative_to(ROOT)).replace(os.sep, "/") for p in (ROOT / "soft_niggli").rglob("__init__.py")
                    if "__pycache__" not in p.parts}
        missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
        assert not missing, f"subpackages missing from the wheel: {missing}"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        assert f"Version: {soft_niggli.__version__}" in metadata and "License-Expression: MIT" in metadata
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        assert "proxy-spglib = soft_niggli.baselines.spglib_proxy:SpglibProxyLoss" in entry_points
        assert "[console_scripts]" in entry_points and "soft-niggli = soft_niggli.cli:main" in entry_points
        assert f"{dist_info}/licenses/LICENSE" in names
        # The compiled parts, where their modules import them (optional: all where a C compiler built them,
        # none where none did), and none of their C sources or header: those stay in the sdist.
        compiled = {n.split(".")[0] for n in names if n.endswith((".so", ".pyd"))}
        assert compiled in (set(), {"soft_niggli/niggli/_niggli_kernel", "soft_niggli/_loss_kernel",
                                    "soft_niggli/_lattice_kernel"}), compiled
        assert not [n for n in names if n.endswith((".c", ".h"))], names
        # The bundled crystals and their NOTICE, byte for byte, and nothing else under data/.
        from soft_niggli.datasets import BUNDLED

        data = sorted(n for n in names if n.startswith("soft_niggli/data/"))
        assert data == sorted([f"soft_niggli/data/{name}.csv.gz" for name in BUNDLED] + ["soft_niggli/data/NOTICE"])
        for name in data:
            assert zf.read(name) == (ROOT / name).read_bytes(), name


def test_sdist_holds_every_c_source_and_header_of_the_extensions(tmp_path):
    _setuptools_for_build()
    src = _clean_copy(tmp_path)
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"sdist failed:\n{out.stdout}\n{out.stderr}"
    (sdist,) = (tmp_path / "dist").glob("soft_niggli-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    sources = {str(p.relative_to(ROOT)).replace(os.sep, "/") for p in (ROOT / "soft_niggli").rglob("*")
               if p.suffix in (".c", ".h")}
    assert "soft_niggli/_kernels/kernels.h" in sources and "soft_niggli/niggli/_niggli_kernel.c" in sources
    assert sources <= names, sorted(sources - names)


# ------------------------------------------------------------------------------ kernel warning

_BLOCK_KERNEL = textwrap.dedent("""
    import sys, warnings

    class BlockKernel:  # as if the C extension had not been built
        def find_spec(self, name, path=None, target=None):
            if name == "soft_niggli.niggli._niggli_kernel":
                raise ImportError("blocked by the test")
            return None

    sys.meta_path.insert(0, BlockKernel())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import soft_niggli
        from soft_niggli import niggli
        niggli.niggli_reduce([[4.0, 0, 0], [4, 4, 0], [0, 0, 5]])
        niggli.niggli_reduce([[4.0, 0, 0], [4, 4, 0], [0, 0, 5]])
    assert not niggli.COMPILED_KERNEL
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "_niggli_kernel" in str(w.message):
            print("WARNING:", w.message)
""")


@pytest.mark.parametrize("silenced", [False, True])
def test_a_missing_kernel_warns_once_unless_silenced(silenced):
    env = {k: v for k, v in os.environ.items() if k != "SOFT_NIGGLI_NO_KERNEL_WARNING"}
    if silenced:
        env["SOFT_NIGGLI_NO_KERNEL_WARNING"] = "1"
    # The same soft_niggli as this process imported, checkout or install.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(soft_niggli.__file__).resolve().parents[1]),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", _BLOCK_KERNEL], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stdout.splitlines() if line.startswith("WARNING:")]
    if silenced:
        assert warnings == []
    else:
        assert len(warnings) == 1, out.stdout
        assert "NumPy core" in warnings[0] and "slower" in warnings[0]
        assert "pip install" in warnings[0] and "SOFT_NIGGLI_NO_KERNEL_WARNING=1" in warnings[0]


_BLOCK_LOSS_KERNELS = textwrap.dedent("""
    import importlib.machinery, importlib.util, sys

    blocked = set(sys.argv[1:])
    # Which extensions this checkout has, found without importing soft_niggli (which imports them).
    package = importlib.util.find_spec("soft_niggli").submodule_search_locations
    built = {name: importlib.machinery.PathFinder.find_spec(name, package) is not None
             for name in ("_loss_kernel", "_lattice_kernel")}

    class BlockKernel:  # as if these C extensions had not been built
        def find_spec(self, name, path=None, target=None):
            if name in blocked:
                raise ImportError("blocked by the test")
            return None

    sys.meta_path.insert(0, BlockKernel())
    import torch
    from soft_niggli import CrystalBatch, _reduced_forms, get_loss, lattice_automorphisms, unimodular
    from soft_niggli.losses import invariants, periodic, windows

    # Each extension stands alone: a blocked one takes its own loops with it, and no other.
    losses = built["_loss_kernel"] and "soft_niggli._loss_kernel" not in blocked
    lattice = built["_lattice_kernel"] and "soft_niggli._lattice_kernel" not in blocked
    assert periodic.COMPILED_PAIRS == (windows._kernel is not None) == (invariants._kernel is not None) == losses
    assert (unimodular._kernel is not None) == (_reduced_forms._compiled_reduced_forms is not None) == lattice
    L = torch.tensor([[[4.0, 0, 0], [0, 4, 0], [0, 0, 4]]], dtype=torch.float64)
    label = CrystalBatch(L, torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0.5]], dtype=torch.float64), [2], [11, 17])
    pred = CrystalBatch(L + 0.1, label.frac + 0.02, [2], [11, 17])
    for name in ("softmin", "gram", "reduced-forms"):
        value = float(get_loss(name)(pred, label).loss)
        assert value == value and value > 0, (name, value)
    assert lattice_automorphisms(L).counts(1).tolist() == [48]
    print("OK")
""")


@pytest.mark.parametrize("blocked", [["soft_niggli._loss_kernel"], ["soft_niggli._lattice_kernel"],
                                     ["soft_niggli._loss_kernel", "soft_niggli._lattice_kernel"]],
                         ids=["loss-kernel", "lattice-kernel", "both"])
def test_the_losses_and_the_lattice_enumerations_work_without_their_compiled_loops(blocked):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(soft_niggli.__file__).resolve().parents[1]),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", _BLOCK_LOSS_KERNELS, *blocked], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr
