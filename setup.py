"""Build of the one compiled part: the reducer's per-cell loop (soft_niggli/_niggli_kernel.c).

Everything else (metadata, dependencies, packages) is in pyproject.toml. The extension is optional:
where it cannot be built (no C compiler), the package installs anyway and the reducer runs its NumPy
core, which gives the same results, slower. Flags: -ffp-contract=off so that no multiply-add is fused
(the arithmetic then rounds exactly as the NumPy core's does); -fno-math-errno so that sqrt is one
instruction (errno is never read). They are GCC/Clang flags; another compiler rejects them, and the
NumPy core runs.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "soft_niggli._niggli_kernel",
    sources=["soft_niggli/_niggli_kernel.c"],
    extra_compile_args=["-O2", "-ffp-contract=off", "-fno-math-errno"],
    optional=True,
)])
