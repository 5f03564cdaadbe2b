"""The activations the benchmark compares: ours, the JAX/Flax peers, and (optionally) torch.

Each variant has a stable key (used in results.json), a label (used in the tables) and a
family: ``softplus`` rows are compared with ``jax.nn.softplus``, ``xsin`` rows with plain
autodiff of ``x * jnp.sin(x)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

import stable_layers as sl

NO_TORCH_ENV = "STABLE_LAYERS_BENCH_NO_TORCH"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    family: str  # "softplus", "xsin" or "identity"
    fn: Callable[[jax.Array], jax.Array]
    ours: bool = False


def _naive_softplus(x):
    return jnp.log1p(jnp.exp(x))


def _autodiff_xsin(x):
    return x * jnp.sin(x)


def _identity(x):
    return x


def _flax_softplus():
    try:
        import flax.linen as nn
    except ImportError:  # flax is an optional extra; its softplus is jax.nn.softplus anyway
        return None
    return nn.softplus


def jax_variants() -> list[Variant]:
    """Every JAX activation measured, reference first within each family."""
    out = [
        Variant("jax_nn_softplus", "jax.nn.softplus", "softplus", jax.nn.softplus),
        Variant("naive_log1p_exp", "naive autodiff log1p(exp(x))", "softplus", _naive_softplus),
    ]
    flax_sp = _flax_softplus()
    if flax_sp is not None:
        out.append(Variant("flax_linen_softplus", "flax.linen.softplus", "softplus", flax_sp))
    out += [
        Variant(
            "ours_softplus_output",
            "ours softplus residual=output (default)",
            "softplus",
            sl.softplus,
            ours=True,
        ),
        Variant(
            "ours_softplus_input_seed000",
            "ours stable_log1pexp (residual=input, seed 000)",
            "softplus",
            sl.stable_log1pexp,
            ours=True,
        ),
        Variant(
            "ours_softplus_output_jvp",
            "ours softplus residual=output mode=jvp",
            "softplus",
            functools.partial(sl.softplus, mode="jvp"),
            ours=True,
        ),
        Variant("autodiff_xsin", "autodiff x*jnp.sin(x)", "xsin", _autodiff_xsin),
        Variant(
            "ours_xsin_derivative",
            "ours xsin residual=derivative (default)",
            "xsin",
            sl.xsin,
            ours=True,
        ),
        Variant(
            "ours_xsin_input_and_sin_seed002",
            "ours xsin residual=input_and_sin (seed 002)",
            "xsin",
            functools.partial(sl.xsin, residual="input_and_sin"),
            ours=True,
        ),
        Variant(
            "ours_xsin_input",
            "ours xsin residual=input",
            "xsin",
            functools.partial(sl.xsin, residual="input"),
            ours=True,
        ),
    ]
    return out


IDENTITY = Variant("identity", "identity (no activation)", "identity", _identity)

REFERENCE = {"softplus": "jax_nn_softplus", "xsin": "autodiff_xsin"}
TORCH_REFERENCE = {"softplus": "torch_softplus", "xsin": "torch_xsin"}


def load_torch():
    """(torch module or None, reason). Torch is optional: CI does not install it.

    Setting STABLE_LAYERS_BENCH_NO_TORCH=1 hides an installed torch (to exercise the skip path).
    """
    if os.environ.get(NO_TORCH_ENV):
        return None, f"torch rows skipped: hidden by {NO_TORCH_ENV}=1"
    try:
        import torch
    except ImportError as err:
        return None, f"torch rows skipped: torch is not installed ({err})"
    torch.set_num_threads(2)
    return torch, f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"


def torch_variants(torch) -> list[tuple[str, str, str, Callable]]:
    """(key, label, family, fn) for the torch peers; fn maps a torch tensor to a tensor."""
    import torch.nn.functional as F

    return [
        ("torch_softplus", "torch.nn.functional.softplus", "softplus", F.softplus),
        ("torch_xsin", "torch autograd x*torch.sin(x)", "xsin", lambda x: x * torch.sin(x)),
    ]
