"""Build of what pyproject.toml cannot declare: the package layout and the compiled parts.

Everything else (metadata, dependencies, version) is in pyproject.toml.

Packages: ``soft_niggli`` and its subpackages (among them ``soft_niggli.baselines``, the peer reducers
and the ``"proxy-spglib"`` loss), found automatically.

Extensions: the reducer's per-cell loop (``soft_niggli/niggli/_niggli_kernel.c``, built as
``soft_niggli.niggli._niggli_kernel``); the losses' loops
(``soft_niggli._loss_kernel``: the periodic coordinate term of many pairs, the candidate windows, the
lattice vectors in a ball); the enumerations on single lattices that code outside the losses uses
(``soft_niggli._lattice_kernel``: automorphisms, reduced forms). The last two are built from the
sources in ``soft_niggli/_kernels/``, one per concept (``kernels.h`` lists them). All are optional:
where they cannot be built (no C compiler), the package installs anyway and runs their NumPy /
PyTorch counterparts, which give the same results, slower. The flags are chosen per compiler:

* GCC/Clang (``unix``, ``mingw32``, ``cygwin``): ``-O2 -ffp-contract=off -fno-math-errno``.
  ``-ffp-contract=off`` so that no multiply-add is fused (the arithmetic then rounds exactly as the
  NumPy core's does); ``-fno-math-errno`` so that sqrt is one instruction (errno is never read).
* MSVC: ``/O2 /fp:strict`` (``/fp:strict`` forbids contractions and reassociation likewise).
* Any other compiler: no extra flags (its defaults must then not contract multiply-adds).
"""

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

_FLAGS = {
    "unix": ["-O2", "-ffp-contract=off", "-fno-math-errno"],
    "mingw32": ["-O2", "-ffp-contract=off", "-fno-math-errno"],
    "cygwin": ["-O2", "-ffp-contract=off", "-fno-math-errno"],
    "msvc": ["/O2", "/fp:strict"],
}


_KERNEL_HEADER = "soft_niggli/_kernels/kernels.h"  # shared by the sources below (sdist: setuptools adds `depends`)


def _kernel_sources(*names: str) -> list[str]:
    """The C sources ``soft_niggli/_kernels/<name>.c``, the extension's method table first."""
    return [f"soft_niggli/_kernels/{name}.c" for name in names]


class BuildExt(build_ext):
    """``build_ext`` that adds the flags of the compiler actually in use (known only at build time)."""

    def build_extensions(self):
        flags = _FLAGS.get(self.compiler.compiler_type, [])
        for ext in self.extensions:
            ext.extra_compile_args = [*flags, *(ext.extra_compile_args or [])]
        super().build_extensions()


setup(
    packages=find_packages(include=["soft_niggli", "soft_niggli.*"]),
    ext_modules=[
        Extension("soft_niggli.niggli._niggli_kernel", sources=["soft_niggli/niggli/_niggli_kernel.c"],
                  optional=True),
        Extension("soft_niggli._loss_kernel", sources=_kernel_sources("loss_kernel", "periodic_pairs", "window",
                                                                       "ball_vectors"),
                  depends=[_KERNEL_HEADER], optional=True),
        Extension("soft_niggli._lattice_kernel", sources=_kernel_sources("lattice_kernel", "automorphisms",
                                                                         "reduced_forms"),
                  depends=[_KERNEL_HEADER], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
