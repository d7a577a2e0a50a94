"""Argument checks shared by the modules: bad arguments raise ValueError naming what was expected."""

from __future__ import annotations

import numpy as np
import torch


def as_float_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a floating torch tensor, accepting NumPy arrays and floating tensors only."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f" or x.dtype.itemsize > 8:
            raise ValueError(f"{name}: expected a floating dtype (float16/float32/float64), got numpy {x.dtype}")
        if not x.dtype.isnative or any(stride < 0 for stride in x.strides):
            # torch.from_numpy takes neither byte-swapped data nor negative strides (x[::-1]): copy those.
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype (float32/float64), got {x.dtype}")
    return x


def check_matrix_shape(x: torch.Tensor, name: str) -> None:
    if x.dim() < 2 or tuple(x.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected shape (..., 3, 3), got {tuple(x.shape)}")


def check_last_dim(x: torch.Tensor, name: str, size: int = 3) -> None:
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected shape (..., {size}), got {tuple(x.shape)}")
