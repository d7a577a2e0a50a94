"""``python -m soft_niggli.cli``: the ``soft-niggli`` command."""

from soft_niggli.cli import main

# Guarded: tools that import every module (the doctest walk, documentation builders) must not run it.
if __name__ == "__main__":
    raise SystemExit(main())
