"""The one list of activations that the generic tests and the benchmarks read.

An activation added here is swept for finiteness and accuracy in every dtype, checked for its
residual counts, MLP step memory, transforms (jit, vmap, checkpoint, scan, 8-device sharding),
hypothesis properties and layer agreement across Equinox, linen and nnx, and benchmarked for
time, memory and accuracy, with no edit anywhere else. Its specific behaviour (β, threshold,
seed entry points, the limits it promises) goes in its own test file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from helpers import log_sigmoid_ref, sigmoid_ref, softplus_ref, xsin_grad_ref, xsin_ref

import stable_layers as sl


@dataclasses.dataclass(frozen=True)
class Entry:
    """One activation: the function, its float64 references, its peers and its layers.

    Attributes:
        name: Short name, used in test ids and benchmark tables.
        fn: ``fn(x, *, residual=..., mode=...)``.
        residuals: The valid residual policies, the default first, with the number of
            full-size arrays each keeps for the backward pass.
        reference: float64 NumPy ``x -> y``.
        derivative: float64 NumPy ``x -> dy/dx``.
        grad_scale: float64 NumPy ``x -> scale`` for the gradient's error, in ulps of the
            scale (``|dy/dx|`` by default; x·sin x cancels, so its scale is
            ``|sin x| + |x cos x|``).
        ulps: Per dtype, the max error of the forward and of the gradient (of every policy)
            over the dense sweep, as asserted by the generic accuracy test.
        naive: The textbook formula under plain autodiff, or None.
        peer: The library function users reach for today (``jax.nn``), or None.
        layer: The class name in ``stable_layers.equinox`` / ``.linen`` / ``.nnx``.
        sweep_limit: The linear part of the float32/float64 sweep, ``[-limit, limit]``.
        monotone: Non-decreasing, so hypothesis checks monotonicity.
    """

    name: str
    fn: Callable
    residuals: dict[str, int]
    reference: Callable
    derivative: Callable
    ulps: dict[str, tuple[float, float]]
    grad_scale: Callable | None = None
    naive: Callable | None = None
    peer: Callable | None = None
    layer: str | None = None
    sweep_limit: float = 120.0
    monotone: bool = False

    def scale(self, x):
        return np.abs(self.derivative(x)) if self.grad_scale is None else self.grad_scale(x)


def _xsin_scale(x):
    x = np.asarray(x, np.float64)
    return np.abs(np.sin(x)) + np.abs(x * np.cos(x))


ENTRIES = [
    Entry(
        name="softplus",
        fn=sl.softplus,
        residuals={"output": 1, "input": 1},
        reference=softplus_ref,
        derivative=sigmoid_ref,
        # "output" rebuilds the slope from the rounded y: 1.27 ulp in float16 (the README).
        ulps={
            "float16": (0.5, 1.4),
            "bfloat16": (0.5, 1.4),
            "float32": (3.0, 3.0),
            "float64": (2.0, 4.0),
        },
        naive=lambda x: jnp.log1p(jnp.exp(x)),
        peer=jax.nn.softplus,
        layer="Softplus",
        monotone=True,
    ),
    Entry(
        name="log_sigmoid",
        fn=sl.log_sigmoid,
        residuals={"output": 1, "input": 1},
        reference=log_sigmoid_ref,
        derivative=lambda x: sigmoid_ref(-np.asarray(x, np.float64)),
        ulps={
            "float16": (0.5, 1.4),
            "bfloat16": (0.5, 1.4),
            "float32": (3.0, 3.0),
            "float64": (2.0, 4.0),
        },
        naive=lambda x: jnp.log(jax.nn.sigmoid(x)),
        peer=jax.nn.log_sigmoid,
        layer="LogSigmoid",
        monotone=True,
    ),
    Entry(
        name="xsin",
        fn=sl.xsin,
        residuals={"derivative": 1, "input_and_sin": 2, "input": 1},
        reference=xsin_ref,
        derivative=xsin_grad_ref,
        grad_scale=_xsin_scale,
        # The forward is in ulps of x·sin x, except where it is near 0, where sin's absolute
        # error dominates: the generic test measures it in ulps of |x|.
        ulps={
            "float16": (1.0, 2.0),
            "bfloat16": (1.0, 2.0),
            "float32": (2.5, 2.5),
            "float64": (2.0, 4.0),
        },
        naive=lambda x: x * jnp.sin(x),
        peer=None,
        layer="XSin",
        sweep_limit=1e4,
    ),
]

BY_NAME = {e.name: e for e in ENTRIES}


def cases(modes=("vjp", "jvp")):
    """(entry, residual, mode) for every entry, policy and mode, with readable ids."""
    import pytest

    return [
        pytest.param(e, r, m, id=f"{e.name}-{r}-{m}")
        for e in ENTRIES
        for r in e.residuals
        for m in modes
    ]
