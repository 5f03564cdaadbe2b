"""``sincos(x)``: sine and cosine from one range reduction, in plain ``jax.numpy``/``lax``.

XLA's CPU ``sin`` and ``cos`` are scalar library calls, not vectorised loops like its
``exp``, and ``x · sin(x)`` with its derivative
``sin x + x cos x`` needs both. On CPU this module computes the pair with vectorisable
arithmetic only (no custom calls); every other backend, whose ``sin`` and ``cos`` are
vectorised, gets ``jnp.sin`` and ``jnp.cos`` (``_activation.on_cpu`` picks at lowering).

Method (float32):

1. Quadrant ``k = round(x · 2/π)`` and ``r = x - k·π/2`` by Cody-Waite: π/2 is split into
   ``C1 + C2 + C3 + C4`` (7, 11 and 11 significant bits, then a full float32), so for
   ``|k| <= 2**13`` each ``k·Ci`` (i <= 3) is exact. ``x - k·C1 - k·C2`` is exact (Sterbenz,
   and every term is a multiple of 2**-24 with a result below 1), the ``k·C3`` step is a
   TwoSum, and the rounding error of that step and ``k·C4`` become the tail: ``r = rh + rl``
   with ``|rl| <= ulp(rh) / 2``. π/2 is carried to 2**-63.4. The float32 closest to a
   multiple of π/2 below the bound is 252.898... (k = 161, ``|r| = 4.19e-9``, 28 bits
   cancel) and the largest ``k / |r|`` below it is 2**35.2, so the reduced argument keeps a
   relative error below 2**-26.6 (0.16 ulp) on the whole fast path. (The algebra relies on
   IEEE arithmetic without reassociation, XLA's default; fused multiply-adds, as on GPU, only
   make the rounded ``k·C4`` step more accurate, every other product being exact.)
2. On ``[-π/4, π/4]``: ``sin r = rh + (rh·z·P(z) + rl·(1 - z/2))`` and
   ``cos r = 1 - z/2 + (z²·Q(z) - rh·rl)``, ``z = rh²``, with the float32 minimax
   coefficients of SLEEF's ``sincosf`` (their own approximation error: 0.07 ulp for sin,
   0.01 for cos); ``1 - z/2`` is summed with its rounding error carried (fdlibm's
   ``__kernel_cosf`` trick).
3. ``k mod 4`` swaps and negates the pair.

Bound and fallback: the fast path is used for ``|x| <= BOUND = 12867``, where
``|k| <= 8191 < 2**13`` keeps the reduction exact as above. One ``lax.cond`` on
``max(|x|) <= BOUND`` (a single reduction pass over x) picks the
fast path for the whole array; otherwise every element with ``|x| > BOUND``, ±inf or NaN
gets ``jnp.sin``/``jnp.cos`` and the rest the fast path, so an element's result never depends
on its neighbours. ``sin(±inf)`` and ``cos(±inf)`` are NaN and NaN propagates, as in
``jnp.sin``.

Under ``vmap`` a batched ``lax.cond`` predicate becomes a ``select`` that evaluates both
branches: the fast path twice plus ``jnp.sin`` and ``jnp.cos`` of every element, slower
than plain ``jnp.sin`` + ``jnp.cos``. A ``jax.custom_batching.custom_vmap`` rule avoids it:
a batched call takes the maximum over the whole batch, so ``vmap`` costs what one call on the
stacked array costs (``tests/test_sincos.py`` checks the batched program keeps its
conditional).

Memory: XLA fuses nothing across a ``cond``, so ``sin x`` and ``cos x`` are written out by the
branch and read back by their consumers; on CPU the branch evaluates the kernel once per
output (XLA:CPU makes no multi-output loop fusions), which costs less than packing the pair.
``sincos(x, epilogue=f)`` evaluates ``f(x, sin x, cos x)`` inside the branch instead, so only
what the caller keeps is written. ``xsin``'s default policy uses
``f = lambda x, s, c: (x * s, s + x * c)``; ``python benchmarks/run.py`` measures its
forward+backward against autodiff of ``x * jnp.sin(x)`` (``benchmarks/results.md``: 0.23x in
float32 and 0.26x in bfloat16 at 2**20 and 2**22 elements, on a shared 2-core CPU).

Differentiation: ``sincos`` is a ``jax.custom_jvp`` with the exact rule
``d(sin, cos) = (cos, -sin) dx`` (chained through ``epilogue`` with ``jax.jvp``), so forward
and reverse mode and higher orders work, although the callers (``x · sin x`` and its custom
rules) only evaluate it.

Accuracy against numpy's float64 ``sin``/``cos``, in ulps of the float32 result
(``ulp_error`` of ``tests/helpers.py``), over every positive normal float32 up to the bound
(1.17e9 values; the kernel is exactly odd/even in x): 0.79 ulp for sin, 0.79 for cos
(``jnp.sin``: 0.56). Built on them in float32, ``x · sin x`` is within 1.57 ulp and
``sin x + x cos x`` within 1.54 ulp of ``|sin x| + |x cos x|``. Past the bound the values are
``jnp.sin``'s and ``jnp.cos``'s. For every finite float16 and bfloat16 input, computed in
float32 and rounded once, all four are correctly rounded (0.50 ulp). ``tests/test_sincos.py``
pins these on sweeps, on every float32 within 2 ulp of a multiple of π/4 below the bound
(which holds the hardest cases), and exhaustively in half precision. XLA flushes subnormal
inputs to zero on CPU and GPU; the tests accept either reference there.

float64 input uses ``jnp.sin``/``jnp.cos``; float16 and bfloat16 are computed in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._activation import on_cpu

__all__ = ["BOUND", "sincos"]

_f32 = np.float32

BOUND = _f32(12867.0)
"""Largest ``|x|`` on the fast path: ``round(x · 2/π)`` stays within ``2**13``."""

_TWO_OVER_PI = _f32(0.63661975)
# π/2 = C1 + C2 + C3 + C4 + 8.3e-20. C1..C3 have 7, 11 and 11 significant bits, so k·Ci is
# exact for |k| <= 2**13; C4 is π/2 - C1 - C2 - C3 rounded to float32.
_C1 = _f32(1.5703125)  # 0x1.92p+0
_C2 = _f32(4.837512969970703e-04)  # 0x1.fb4p-12
_C3 = _f32(7.549533620476723e-08)  # 0x1.444p-24
_C4 = _f32(2.5633440682570896e-12)  # 0x1.68c234p-39
# SLEEF sincosf minimax coefficients: sin r = r + r^3 (S1 + S2 r^2 + S3 r^4),
# cos r = 1 - r^2/2 + r^4 (K1 + K2 r^2 + K3 r^4 + K4 r^6) on [-π/4, π/4].
_S1, _S2, _S3 = (
    _f32(-0.166666537523269653),
    _f32(8.33215750753879547e-03),
    _f32(-1.95169282960705459e-04),
)
_K1, _K2 = _f32(4.16666641831398010e-02), _f32(-1.38888787478208542e-03)
_K3, _K4 = _f32(2.47990446951007470e-05), _f32(-2.71811842367242207e-07)


def _fast(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sin x and cos x for float32 ``|x| <= BOUND`` (garbage, but no trap, beyond it)."""
    k = jnp.round(x * _TWO_OVER_PI)
    q = k.astype(jnp.int32)
    # x - k C1 - k C2: exact (see the module docstring).
    h = (x - k * _C1) - k * _C2
    # TwoSum(h, -k C3): its rounding error goes to the tail with -k C4.
    p = -(k * _C3)
    r = h + p
    bb = r - h
    err = (h - (r - bb)) + (p - bb)
    tail = err - k * _C4
    rh = r + tail
    rl = (r - rh) + tail
    z = rh * rh
    hz = 0.5 * z
    sin_r = rh + (rh * z * ((_S3 * z + _S2) * z + _S1) + (rl - rl * hz))
    w = 1.0 - hz
    cos_r = w + (((1.0 - w) - hz) + (z * z * (((_K4 * z + _K3) * z + _K2) * z + _K1) - rh * rl))
    swap = (q & 1) == 1
    s = jnp.where(swap, cos_r, sin_r)
    c = jnp.where(swap, sin_r, cos_r)
    s = jnp.where((q & 2) == 2, -s, s)
    c = jnp.where(((q + 1) & 2) == 2, -c, c)
    # Keep sin(-0) = -0 (the reduction above returns +0).
    s = jnp.where(x == 0, x, s)
    return s, c


def _slow(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Fast path where ``|x| <= BOUND``, ``jnp.sin``/``jnp.cos`` elsewhere (incl. inf, NaN)."""
    small = jnp.abs(x) <= BOUND  # False for NaN and ±inf
    s, c = _fast(jnp.where(small, x, 0.0))
    return jnp.where(small, s, jnp.sin(x)), jnp.where(small, c, jnp.cos(x))


def _pair(x: jax.Array, s: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    del x
    return s, c


def _pair_as(dtype, x: jax.Array, s: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The default epilogue: round to the input's dtype inside the branch, so half-precision
    # callers write half-precision arrays.
    del x
    return s.astype(dtype), c.astype(dtype)


def _cond(x: jax.Array, epilogue: Callable) -> Any:
    """``epilogue(x, sin x, cos x)`` for float32 ``x``, inside one ``lax.cond`` on the bound."""

    def fast(x):
        return epilogue(x, *_fast(x))

    def slow(x):
        return epilogue(x, *_slow(x))

    @jax.custom_batching.custom_vmap
    def run(x):
        fits = jnp.max(jnp.abs(x)) <= BOUND  # False if any element is NaN or ±inf
        return lax.cond(fits, fast, slow, x)

    @run.def_vmap
    def run_batched(axis_size, in_batched, xs):
        # One predicate for the whole batch, so the cond stays a cond: vmap of a batched
        # predicate would make it a select that evaluates both branches.
        del axis_size
        out = run(xs)
        return out, jax.tree.map(lambda _: in_batched[0], out)

    return run(x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sincos_then(x: jax.Array, epilogue: Callable) -> Any:
    if x.dtype == jnp.float64:
        return epilogue(x, jnp.sin(x), jnp.cos(x))
    x = x.astype(jnp.float32)
    if x.size == 0:
        return epilogue(x, x, x)
    # The kernel and its cond are for XLA:CPU, whose sin and cos are scalar library calls;
    # GPU and TPU have fast vectorised sin and cos, and a conditional there may read its
    # predicate back to the host once per call.
    return on_cpu(lambda x: _cond(x, epilogue), lambda x: epilogue(x, jnp.sin(x), jnp.cos(x)), x)


@_sincos_then.defjvp
def _sincos_then_jvp(epilogue, primals, tangents):
    (x,), (dx,) = primals, tangents
    s, c = _sincos_then(x, _pair)
    x, dx = x.astype(s.dtype), dx.astype(s.dtype)
    return jax.jvp(epilogue, (x, s, c), (dx, c * dx, -s * dx))


def sincos(x: Any, *, epilogue: Callable | None = None) -> Any:
    """``(sin x, cos x)`` from one range reduction, within 0.8 ulp in float32.

    Args:
        x: A float16, bfloat16, float32 or float64 array, any shape. float64 uses
            ``jnp.sin``/``jnp.cos``; half precision is computed in float32.
        epilogue: Optional elementwise ``f(x, sin_x, cos_x) -> array or tuple of arrays``
            (each of ``x``'s shape), evaluated inside the same ``lax.cond`` branch as the
            kernel, in the compute dtype (float32 for half-precision ``x``) and returned as
            it is. XLA does not fuse across a ``cond``, so without it ``sin x`` and ``cos x``
            are written to memory and read back by their consumers; with it,
            ``sincos(x, epilogue=lambda x, s, c: (x * s, s + x * c))`` writes just those two
            arrays, and ``lambda x, s, c: x * s`` computes no cosine at all. It must not close
            over traced values (it runs under a ``custom_vmap`` rule).

    Returns:
        ``(sin x, cos x)`` in ``x``'s dtype (rounded once from float32 for half precision), or
        what ``epilogue`` returns.

    Raises:
        TypeError: ``x`` is not a real floating-point array.

    Examples:
        >>> import jax.numpy as jnp
        >>> from stable_layers._sincos import sincos
        >>> s, c = sincos(jnp.array([0.0, 1.0, 1e30], jnp.float32))
        >>> print(s, c)
        [ 0.          0.84147096 -0.79116344] [ 1.         0.5403023 -0.6116048]
        >>> print(sincos(jnp.array([2.0], jnp.float32), epilogue=lambda x, s, c: x * s))
        [1.8185948]
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"sincos: x must be a real floating-point array; got {x.dtype}.")
    return _sincos_jitted(x, epilogue=epilogue)


# Jitted so an eager call runs one compiled program; inside a user's jit this inlines away.
@functools.partial(jax.jit, static_argnames=("epilogue",))
def _sincos_jitted(x: jax.Array, *, epilogue: Callable | None) -> Any:
    if epilogue is None:
        epilogue = functools.partial(_pair_as, x.dtype)
    return _sincos_then(x, epilogue)
