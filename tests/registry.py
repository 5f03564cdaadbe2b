"""The one list of activations that the generic tests and the benchmarks read.

An activation added here is swept for finiteness and accuracy in every dtype, checked for its
residual counts, MLP step memory, transforms (jit, vmap, checkpoint, scan, 8-device sharding),
hypothesis properties and layer agreement across Equinox, linen and nnx, and benchmarked for
time, memory and accuracy, with no edit anywhere else. Its specific behaviour (β, threshold,
seed entry points, the limits it promises) goes in its own test file.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from helpers import (
    SELU_ALPHA,
    SELU_SCALE,
    celu_grad_ref,
    celu_ref,
    elu_grad_ref,
    elu_ref,
    elu_slope_from_output,
    gelu_grad_ref,
    gelu_grad_scale,
    gelu_ref,
    gelu_second_ref,
    gelu_tanh_grad_ref,
    gelu_tanh_grad_scale,
    gelu_tanh_ref,
    gelu_tanh_second_ref,
    log_sigmoid_ref,
    mish_grad_ref,
    mish_grad_scale,
    mish_ref,
    mish_second_ref,
    selu_grad_ref,
    selu_ref,
    sigmoid_ref,
    silu_grad_ref,
    silu_grad_scale,
    silu_ref,
    silu_second_ref,
    snake_grad_ref,
    snake_grad_scale,
    snake_ref,
    snake_value_scale,
    softplus_ref,
    xsin_grad_ref,
    xsin_ref,
)

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
        policy_ulps: Tighter bounds for some policies: ``{policy: {dtype: (forward,
            gradient)}}``; a dtype not named there uses ``ulps``. See :meth:`tolerance`.
        value_scale: float64 NumPy ``x -> scale`` for the forward's error, in ulps of the
            scale (``|y|`` by default; see :meth:`forward_scale`).
        second_derivative: float64 NumPy ``x -> d²y/dx²`` for the grad-of-grad test, or None
            (then a central difference of ``derivative`` is used).
        naive: The textbook formula under plain autodiff, or None.
        naive_nonfinite: Whether ``naive`` (or its gradient) is non-finite for some finite
            float16/float32 input where ``fn`` is finite (the failure the activation fixes);
            False asserts that the naive formula is finite everywhere too.
        peer: The library function users reach for today (``jax.nn``), or None.
        layer: The class name in ``stable_layers.equinox`` / ``.linen`` / ``.nnx``.
        sweep_limit: The linear part of the float32/float64 sweep, ``[-limit, limit]``.
        monotone: Non-decreasing, so hypothesis checks monotonicity.
        minimal: For an output-saving activation, ``(forward, slope_from_output)`` of the
            ten-line custom_vjp a user would write by hand (``helpers.output_saving_vjp``):
            the memory tests and the benchmark's memory table hold ours to it.
        output_slope: float64 NumPy ``y -> dy/dx`` for an activation whose slope is a
            function of its output (the ELU family): the generic tests hold the ``"output"``
            policy's gradient to the slope its own rounded output implies (issue 16: "within
            1 ulp of the slope that output implies"), in ulps of that slope, and compare
            ``"input"`` (the exact slope) with the peer.
        second_from_output: With ``output_slope``: float64 ``y -> d²y/dx²`` as the
            ``"output"`` policy's grad-of-grad computes it (the derivative of the slope it
            rebuilds from ``y``), for the transforms tests.
        promotes_like: The function whose integer/bool promotion ``fn`` follows, if not
            ``peer`` (the machine promotes like ``jax.nn.softplus``; ``jax.nn.gelu`` turns
            bool into float32 even with x64).
        checkpoint: The ``checkpoint_name`` of the kept arrays, if not
            ``"stable_layers.<name>"`` (both GELU forms are ``"stable_layers.gelu"``).
    """

    name: str
    fn: Callable
    residuals: dict[str, int]
    reference: Callable
    derivative: Callable
    ulps: dict[str, tuple[float, float]]
    policy_ulps: dict[str, dict[str, tuple[float, float]]] = dataclasses.field(default_factory=dict)
    grad_scale: Callable | None = None
    value_scale: Callable | None = None
    second_derivative: Callable | None = None
    naive: Callable | None = None
    naive_nonfinite: bool = True
    peer: Callable | None = None
    layer: str | None = None
    sweep_limit: float = 120.0
    monotone: bool = False
    minimal: tuple[Callable, Callable] | None = None
    output_slope: Callable | None = None
    second_from_output: Callable | None = None
    promotes_like: Callable | None = None
    checkpoint: str | None = None

    @property
    def checkpoint_name(self) -> str:
        return self.checkpoint or f"stable_layers.{self.name}"

    def scale(self, x):
        """The gradient's error is measured in ulps of this (float64)."""
        return np.abs(self.derivative(x)) if self.grad_scale is None else self.grad_scale(x)

    def forward_scale(self, x):
        """The forward's error is measured in ulps of this (float64)."""
        return np.abs(self.reference(x)) if self.value_scale is None else self.value_scale(x)

    def tolerance(self, dtype: str, residual: str) -> tuple[float, float]:
        """(forward, gradient) max ulps for ``residual`` in ``dtype``."""
        return self.policy_ulps.get(residual, {}).get(dtype, self.ulps[dtype])


def _xsin_scale(x):
    x = np.asarray(x, np.float64)
    return np.abs(np.sin(x)) + np.abs(x * np.cos(x))


def _xsin_value_scale(x):
    """|x sin x|, but |x| near the zeros of sin other than 0 (|sin x| < 1/16, |x| > 1).

    There sin x is the difference of x and a multiple of π, and a range reduction promises
    an absolute error of sin x, not a relative one: test_xsin.py's unit, ulps of |x|.
    """
    x = np.asarray(x, np.float64)
    near_zero = (np.abs(np.sin(x)) < 1 / 16) & (np.abs(x) > 1)
    return np.where(near_zero, np.abs(x), np.abs(x * np.sin(x)))


def _sigmoid_slope(x):
    """sigmoid'(x) = sigmoid(x) sigmoid(-x)."""
    x = np.asarray(x, np.float64)
    return sigmoid_ref(x) * sigmoid_ref(-x)


ENTRIES = [
    Entry(
        name="softplus",
        fn=sl.softplus,
        residuals={"output": 1, "input": 1},
        reference=softplus_ref,
        derivative=sigmoid_ref,
        second_derivative=_sigmoid_slope,
        # Measured max (tests/test_activations.py, forward / gradient, both modes):
        #   "output": f16 0.5001 / 1.2705, bf16 0.5000 / 1.0006, f32 1.9309 / 2.4602,
        #             f64 2 / 4 ("output" rebuilds the slope from the rounded y);
        #   "input":  f16 0.5001 / 0.5001, bf16 0.5000 / 0.5000, f32 1.9309 / 2.1304, f64 2 / 3.
        # (jax.nn.softplus: f16 1.26 / 4.28, bf16 1.21 / 3.95, f32 1.93 / 8.25, f64 2 / 32.)
        ulps={
            "float16": (0.51, 1.3),
            "bfloat16": (0.51, 1.05),
            "float32": (2.0, 2.5),
            "float64": (2.0, 4.0),
        },
        policy_ulps={
            "input": {
                "float16": (0.51, 0.51),
                "bfloat16": (0.51, 0.51),
                "float32": (2.0, 2.2),
                "float64": (2.0, 3.0),
            }
        },
        naive=lambda x: jnp.log1p(jnp.exp(x)),
        peer=jax.nn.softplus,
        minimal=(
            lambda z: jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z))),
            lambda y: -jnp.expm1(-y),
        ),
        layer="Softplus",
        monotone=True,
    ),
    Entry(
        name="log_sigmoid",
        fn=sl.log_sigmoid,
        residuals={"output": 1, "input": 1},
        reference=log_sigmoid_ref,
        derivative=lambda x: sigmoid_ref(-np.asarray(x, np.float64)),
        second_derivative=lambda x: -_sigmoid_slope(x),
        # Measured max: softplus's figures mirrored (x -> -x), but "input" in f64: 2 / 2.
        # (jax.nn.log_sigmoid: f16 1.26 / 4.28, bf16 1.21 / 3.95, f32 1.93 / 8.25, f64 2 / 32.)
        ulps={
            "float16": (0.51, 1.3),
            "bfloat16": (0.51, 1.05),
            "float32": (2.0, 2.5),
            "float64": (2.0, 4.0),
        },
        policy_ulps={
            "input": {
                "float16": (0.51, 0.51),
                "bfloat16": (0.51, 0.51),
                "float32": (2.0, 2.2),
                "float64": (2.0, 2.0),
            }
        },
        naive=lambda x: jnp.log(jax.nn.sigmoid(x)),
        peer=jax.nn.log_sigmoid,
        minimal=(
            lambda z: -(jnp.maximum(-z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z)))),
            lambda y: -jnp.expm1(y),
        ),
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
        value_scale=_xsin_value_scale,
        second_derivative=lambda x: 2 * np.cos(x) - np.asarray(x, np.float64) * np.sin(x),
        # The forward is in ulps of x·sin x, except near sin's zeros other than 0, where sin's
        # absolute error dominates: there in ulps of |x| (_xsin_value_scale). The gradient in
        # ulps of |sin x| + |x cos x|. float16/bfloat16/float32: the accuracy goals of the
        # sincos kernel (_sincos.py), not the measured figures, so swapping sin/cos for it
        # keeps passing. Measured max with jnp.sin/jnp.cos (every policy, both modes):
        # f16 0.4999 / 0.5001 ("input_and_sin": 0.8375), bf16 0.5000 / 0.5000 (0.8432),
        # f32 1.3470 / 1.4360, f64 0 / 1.0 (the bound: 0.5 ulp of sin plus 0.5 of the product).
        ulps={
            "float16": (1.0, 2.0),
            "bfloat16": (1.0, 2.0),
            "float32": (2.5, 2.5),
            "float64": (1.0, 1.5),
        },
        naive=lambda x: x * jnp.sin(x),
        naive_nonfinite=False,  # |x sin x| <= |x|: its cost is memory (3 arrays), not range
        peer=None,
        layer="XSin",
        sweep_limit=1e4,
    ),
    Entry(
        name="silu",
        fn=sl.silu,
        residuals={"input": 1, "derivative": 1},
        reference=silu_ref,
        derivative=silu_grad_ref,
        grad_scale=silu_grad_scale,  # the slope crosses 0: ulps of its terms' size
        second_derivative=silu_second_ref,
        # Issue 16's goals: half precision rounded once (measured max 0.5001, forward and
        # gradient), float32 <= 4 ulp (measured 2.62 / 2.90 over 2^16 points, 2.60 / 3.68
        # over 2^20 in test_silu.py; jax.nn.silu loses all digits where σ(x) underflows,
        # 1.7e7 ulp at x = -91).
        # float64 is against a float64 reference, itself a few ulps off: test_silu.py
        # holds float64 to mpmath.
        ulps={
            "float16": (0.51, 0.51),
            "bfloat16": (0.51, 0.51),
            "float32": (4.0, 4.0),
            "float64": (4.0, 4.0),
        },
        naive=lambda x: x / (1 + jnp.exp(-x)),  # NaN gradient once exp(-x) overflows
        peer=jax.nn.silu,
        layer="SiLU",
    ),
    Entry(
        name="gelu",
        fn=sl.gelu,
        residuals={"input": 1, "derivative": 1},
        reference=gelu_ref,
        derivative=gelu_grad_ref,
        grad_scale=gelu_grad_scale,  # the slope crosses 0 at x = -0.75: ulps of its terms
        second_derivative=gelu_second_ref,
        # Measured max (forward / gradient, 2^18-point sweep): f16 0.5001 / 0.5001, bf16
        # 0.4998 / 0.4999, f32 4.45 / 3.56, f64 6 / 4 (against mpmath below x = -1).
        # jax.nn.gelu(approximate=False): f16 15.2 / 15.9, bf16 192 / 216, f32 1.6e7 / 1.6e7
        # (0 where Φ underflows before x·Φ), f64 8.7e15 / 8.5e15.
        ulps={
            "float16": (0.51, 0.51),
            "bfloat16": (0.51, 0.51),
            "float32": (8.0, 8.0),  # issue 16's goal
            "float64": (8.0, 8.0),
        },
        # The textbook x(1 + erf(x/√2))/2 is finite everywhere: its cost is accuracy (1 + erf
        # cancels for x < 0: all digits lost below x = -5.5 in float32).
        naive=lambda x: 0.5 * x * (1 + jax.scipy.special.erf(x * 0.7071067811865476)),
        naive_nonfinite=False,
        peer=functools.partial(jax.nn.gelu, approximate=False),
        promotes_like=jax.nn.softplus,
        layer="GELU",
    ),
    Entry(
        name="gelu_tanh",
        fn=functools.partial(sl.gelu, approximate=True),
        residuals={"input": 1, "derivative": 1},
        reference=gelu_tanh_ref,
        derivative=gelu_tanh_grad_ref,
        grad_scale=gelu_tanh_grad_scale,
        second_derivative=gelu_tanh_second_ref,
        # Measured max (2^18-point sweep): f16 0.5001 / 0.5002, bf16 0.4998 / 0.4999, f32
        # 144 / 136 (x near -10: the rounding of z = 2√(2/π)x(1 + 0.044715x²) ≈ -88, which
        # σ(z) = e^z amplifies), f64 1588 / 1811 (the same, at x = -21; mpmath reference).
        # jax.nn.gelu: f16 2037 / inf (x**3 overflows), bf16 256 / inf, f32 1.7e7 / inf.
        ulps={
            "float16": (0.51, 0.51),
            "bfloat16": (0.51, 0.51),
            "float32": (256.0, 256.0),  # issue 16's goal
            "float64": (2048.0, 2048.0),
        },
        # The textbook tanh form: x**3 overflows float16 beyond |x| = 40 (fairseq #2235).
        naive=lambda x: 0.5 * x * (1 + jnp.tanh(0.7978845608 * (x + 0.044715 * x**3))),
        peer=jax.nn.gelu,
        promotes_like=jax.nn.softplus,
        layer="GELU",
        checkpoint="stable_layers.gelu",
    ),
    Entry(
        name="mish",
        fn=sl.mish,
        residuals={"input": 1, "derivative": 1},
        reference=mish_ref,
        derivative=mish_grad_ref,
        grad_scale=mish_grad_scale,  # the slope crosses 0 at x = -1.19: ulps of its terms
        second_derivative=mish_second_ref,
        # Measured max (2^18-point sweep): f16 0.5001 / 0.5, bf16 0.4999 / 0.5, f32 2.73 /
        # 2.32, f64 4 / 6 (against a float64 reference; test_mish.py: mpmath, 2 / 2).
        # jax.nn.mish: f16 8.3 / 7.8, bf16 245 / 242, f32 1.7e7 / 1.6e7 (0 below x = -87.3),
        # f64 6 / 134.
        ulps={
            "float16": (0.51, 0.51),
            "bfloat16": (0.51, 0.51),
            "float32": (4.0, 4.0),  # issue 16's goal
            "float64": (5.0, 7.0),
        },
        naive=lambda x: x * jnp.tanh(jnp.log1p(jnp.exp(x))),  # NaN gradient once exp overflows
        peer=jax.nn.mish,
        layer="Mish",
    ),
    Entry(
        name="elu",
        fn=sl.elu,
        residuals={"output": 1, "input": 1},
        reference=elu_ref,
        derivative=elu_grad_ref,
        second_derivative=lambda x: np.where(np.asarray(x) > 0, 0.0, elu_grad_ref(x)),
        output_slope=elu_slope_from_output,
        second_from_output=lambda y: np.where(y > 0, 0.0, y + 1.0),
        promotes_like=jax.nn.softplus,
        # Measured max: see test_elu.py. Issue 16: forward <= 2 ulp in float32, the "output"
        # slope within 1 ulp of the one its output implies.
        ulps={
            "float16": (0.51, 1.0),
            "bfloat16": (0.51, 1.0),
            "float32": (2.0, 2.0),
            "float64": (2.0, 2.0),
        },
        naive=lambda x: jnp.where(x > 0, x, jnp.exp(x) - 1),  # grad NaN: inf * 0 for big x
        peer=jax.nn.elu,
        minimal=(lambda z: jnp.where(z > 0, z, jnp.expm1(z)), lambda y: jnp.where(y > 0, 1, y + 1)),
        layer="ELU",
        monotone=True,
    ),
    Entry(
        name="celu",
        fn=functools.partial(sl.celu, alpha=2.0),
        residuals={"output": 1, "input": 1},
        reference=functools.partial(celu_ref, alpha=2.0),
        derivative=functools.partial(celu_grad_ref, alpha=2.0),
        second_derivative=lambda x: np.where(
            np.asarray(x) > 0, 0.0, celu_grad_ref(x, alpha=2.0) / 2.0
        ),
        output_slope=functools.partial(elu_slope_from_output, alpha=2.0, input_scale=0.5),
        second_from_output=lambda y: np.where(y > 0, 0.0, (y + 2.0) / 4.0),
        promotes_like=jax.nn.softplus,
        ulps={
            "float16": (0.51, 1.0),
            "bfloat16": (0.51, 1.0),
            "float32": (2.0, 2.0),
            "float64": (3.0, 2.0),  # x/α's rounding: 3 ulp at x = -1.1e-7 (measured)
        },
        naive=lambda x: jnp.where(x > 0, x, 2.0 * (jnp.exp(x / 2.0) - 1)),
        peer=functools.partial(jax.nn.celu, alpha=2.0),
        minimal=(
            lambda z: jnp.where(z > 0, z, 2.0 * jnp.expm1(z / 2.0)),
            lambda y: jnp.where(y > 0, 1, (y + 2.0) / 2.0),
        ),
        layer="CELU",
        monotone=True,
    ),
    Entry(
        name="selu",
        fn=sl.selu,
        residuals={"output": 1, "input": 1},
        reference=selu_ref,
        derivative=selu_grad_ref,
        second_derivative=lambda x: np.where(np.asarray(x) > 0, 0.0, selu_grad_ref(x)),
        output_slope=functools.partial(elu_slope_from_output, alpha=SELU_ALPHA, scale=SELU_SCALE),
        second_from_output=lambda y: np.where(y > 0, 0.0, y + SELU_SCALE * SELU_ALPHA),
        promotes_like=jax.nn.softplus,
        ulps={
            "float16": (0.51, 1.0),
            "bfloat16": (0.51, 1.0),
            "float32": (2.0, 2.0),
            "float64": (3.0, 3.0),  # 3 at x = -0.0696 and -113: the reference rounds twice too
        },
        naive=lambda x: SELU_SCALE * jnp.where(x > 0, x, SELU_ALPHA * (jnp.exp(x) - 1)),
        peer=jax.nn.selu,
        minimal=(
            lambda z: SELU_SCALE * jnp.where(z > 0, z, SELU_ALPHA * jnp.expm1(z)),
            lambda y: jnp.where(y > 0, SELU_SCALE, y + SELU_SCALE * SELU_ALPHA),
        ),
        layer="SELU",
        monotone=True,
    ),
    Entry(
        name="snake",
        fn=functools.partial(sl.snake, alpha=0.5),  # α = 1/2: s = αx is exact
        residuals={"input": 1},
        reference=functools.partial(snake_ref, alpha=0.5),
        derivative=functools.partial(snake_grad_ref, alpha=0.5),
        value_scale=functools.partial(snake_value_scale, alpha=0.5),
        grad_scale=functools.partial(snake_grad_scale, alpha=0.5),
        second_derivative=lambda x: np.cos(np.asarray(x, np.float64)),  # 2α·cos(2αx), α = 1/2
        # Forward in ulps of |x| + sin²(αx)/α, slope in ulps of 1 + |sin 2αx|. Measured max
        # (test_snake.py, 2^18 points): f16 0.5 / 0.5, bf16 0.5 / 0.5, f32 1.0 / 1.42.
        ulps={
            "float16": (0.51, 1.0),
            "bfloat16": (0.51, 1.0),
            "float32": (2.0, 2.0),
            "float64": (2.0, 2.0),
        },
        naive=lambda x: x + jnp.sin(0.5 * x) ** 2 / 0.5,
        naive_nonfinite=False,  # at α = 1/2 the textbook form is finite; its failure is α -> 0
        peer=None,
        layer="Snake",
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
