"""Seeding, determinism, device choice and the ``accelerate.Accelerator`` every notebook uses."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, ask torch for deterministic kernels; return a seeded CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` torch threads (default: ``$COMPANION_THREADS``, else what torch chose). Returns the count."""
    n = n or int(os.environ.get("COMPANION_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(n)
    return n


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. ``cuda`` without a GPU is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'")
    return torch.device(device)


def accelerator(device: str = "auto", mixed_precision: str = "no"):
    """The ``accelerate.Accelerator`` for this device (CPU runs in fp32; bf16/fp16 only on a GPU)."""
    from accelerate import Accelerator

    cpu = resolve_device(device).type == "cpu"
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else mixed_precision)
