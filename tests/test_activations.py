"""Every activation in ``tests/registry.py``, for every residual policy, mode and float dtype.

* Sweep: the forward and the gradient (a vjp with ones) are finite, of the input's dtype, and
  within ``entry.tolerance(dtype, residual)`` ulps of the float64 references over
  ``helpers.sweep`` (every finite value in float16/bfloat16; 2**16 points in float32/float64).
  The forward is in ulps of ``entry.forward_scale(x)`` (``|y|`` unless the entry says
  otherwise), the gradient in ulps of ``entry.scale(x)``. ``mode="jvp"`` gives bit-identical
  values and gradients to ``mode="vjp"``.
* Edge points: 0, ±tiny, ±1e4, ±finfo.max, ±inf and NaN against the reference's limits.
* Dtypes: integers and booleans promote like the peer (or ``jax.nn.softplus``), complex raises
  TypeError, a bad ``residual``/``mode`` raises ValueError naming the argument and the choices.
* The naive formula under plain autodiff is non-finite somewhere the activation is not (or,
  for an entry that says so, finite everywhere too).
* The peer (``jax.nn``) is no more accurate than the default policy, forward and gradient.

XLA flushes subnormal inputs to zero on CPU and GPU alike, so at a subnormal x either
reference counts, that of x or that of 0 (``tests/test_sincos.py`` does the same).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import registry
from helpers import FLOAT_DTYPES, edge_points, np_dtype, sweep, ulp_error

SWEEP_N = 1 << 16  # float32/float64 sweep size: ~0.1 s of kernel time per case
ENTRIES = [pytest.param(e, id=e.name) for e in registry.ENTRIES]


@functools.cache
def _inputs(entry_name: str, name: str) -> tuple[np.ndarray, int]:
    """The sweep followed by the edge points, and where the edge points start."""
    x = sweep(name, n=SWEEP_N, limit=registry.BY_NAME[entry_name].sweep_limit)
    return np.concatenate([x, edge_points(name)]), len(x)


def _value_and_grad(f, x):
    """f(x) and the vjp of ones (dy/dx elementwise), in one jitted call."""
    return jax.jit(_y_and_g(f))(jnp.asarray(x))


def _y_and_g(f):
    def both(x):
        y, vjp = jax.vjp(f, x)
        return y, vjp(jnp.ones_like(y))[0]

    return both


@functools.cache
def _run_all(entry_name: str, name: str):
    """{(residual, mode): (y, g)} for every policy and mode: one compile (~0.1 s each saved)."""
    e = registry.BY_NAME[entry_name]
    x, _ = _inputs(entry_name, name)
    keys = [(r, m) for r in e.residuals for m in ("vjp", "jvp")]
    fs = [_y_and_g(functools.partial(e.fn, residual=r, mode=m)) for r, m in keys]
    out = jax.jit(lambda x: [f(x) for f in fs])(jnp.asarray(x))
    return {k: (np.asarray(y), np.asarray(g)) for k, (y, g) in zip(keys, out)}


def _run(entry_name: str, residual: str, mode: str, name: str):
    return _run_all(entry_name, name)[residual, mode]


def _errors(entry, x, y, g, name, residual=None):
    """(forward, gradient) errors in ulps; at subnormal x, the smaller of those at x and 0.

    With ``residual="output"`` and an entry's ``output_slope``, the gradient is held to the
    slope its own (rounded) output implies, in ulps of that slope.
    """
    from_output = residual == "output" and entry.output_slope is not None

    def at(xr, y, g):
        with np.errstate(all="ignore"):  # inf * sin(inf) and the like: NaN is the reference
            ref, dref = entry.reference(xr), entry.derivative(xr)
            fs, gs = entry.forward_scale(xr), entry.scale(xr)
            if from_output:
                dref = entry.output_slope(np.asarray(y))  # y in its own dtype
                gs = np.abs(dref)
        return (
            ulp_error(y, ref, name, scale=fs),
            ulp_error(g, dref, name, scale=gs),
        )

    x64 = np.asarray(x).astype(np.float64)
    fe, ge = at(x64, y, g)
    # Beyond finfo.max (λx of SELU near it): ±inf or ±finfo.max of the right sign is exact.
    fmax = float(ml_dtypes.finfo(np_dtype(name)).max)
    with np.errstate(all="ignore"):
        refs = (entry.reference(x64), entry.derivative(x64))
    for err, a, r in zip((fe, ge), (y, g), refs):
        a64 = np.asarray(a).astype(np.float64)
        over = np.isfinite(r) & (np.abs(r) > fmax) & (np.abs(a64) >= fmax)
        err[over & (np.sign(a64) == np.sign(r))] = 0.0
    sub = (x64 != 0) & (np.abs(x64) < float(ml_dtypes.finfo(np_dtype(name)).tiny))
    if sub.any():
        fe0, ge0 = at(np.zeros(int(sub.sum())), y[sub], g[sub])
        fe[sub], ge[sub] = np.minimum(fe[sub], fe0), np.minimum(ge[sub], ge0)
    return fe, ge


def _worst(x, err):
    i = int(np.argmax(err))
    return f"{float(err[i]):.4g} ulp at x={float(np.asarray(x[i], np.float64))!r}"


# ----------------------------------------------------------------------------------------
# Sweep and edge points: every entry x policy x mode x float dtype.
# ----------------------------------------------------------------------------------------


def assert_finite_and_accurate(entry, x, y, g, name, residual):
    """Finite wherever the true value is below finfo.max (beyond it the ulp check accepts
    ±inf or ±finfo.max), and within the entry's ulp bounds for ``residual``."""
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    fmax = float(ml_dtypes.finfo(np_dtype(name)).max)
    with np.errstate(all="ignore"):
        big_y = np.abs(entry.reference(x.astype(np.float64))) > fmax
        big_g = np.abs(entry.derivative(x.astype(np.float64))) > fmax
    bad_y, bad_g = ~np.isfinite(y64) & ~big_y, ~np.isfinite(g64) & ~big_g
    assert not bad_y.any(), f"{residual}: non-finite output at x={x[bad_y][:5]}"
    assert not bad_g.any(), f"{residual}: non-finite gradient at x={x[bad_g][:5]}"
    fe, ge = _errors(entry, x, y, g, name, residual)
    tol_f, tol_g = entry.tolerance(name, residual)
    assert fe.max() <= tol_f, f"{residual}: forward {_worst(x, fe)} > {tol_f}"
    assert ge.max() <= tol_g, f"{residual}: gradient {_worst(x, ge)} > {tol_g}"


@pytest.mark.parametrize("name", FLOAT_DTYPES)
@pytest.mark.parametrize("entry,residual,mode", registry.cases())
def test_sweep_finite_and_accurate(entry, residual, mode, name):
    xs, n = _inputs(entry.name, name)
    y, g = _run(entry.name, residual, mode, name)
    assert y.dtype == np_dtype(name) and g.dtype == np_dtype(name)
    x, y, g = xs[:n], y[:n], g[:n]
    assert_finite_and_accurate(entry, x, y, g, name, residual)
    if mode == "jvp":  # both rules give identical values and gradients
        y_vjp, g_vjp = _run(entry.name, residual, "vjp", name)
        np.testing.assert_array_equal(y, y_vjp[:n])
        np.testing.assert_array_equal(g, g_vjp[:n])


@pytest.mark.parametrize("name", FLOAT_DTYPES)
@pytest.mark.parametrize("entry,residual,mode", registry.cases())
def test_edge_points(entry, residual, mode, name):
    xs, n = _inputs(entry.name, name)
    y, g = _run(entry.name, residual, mode, name)
    x, y, g = xs[n:], y[n:], g[n:]
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        refs = {"output": entry.reference(x64), "gradient": entry.derivative(x64)}
    errors = dict(zip(refs, _errors(entry, x, y, g, name, residual)))
    tol = dict(zip(refs, entry.tolerance(name, residual)))
    for what, a in (("output", y), ("gradient", g)):
        a64, r = a.astype(np.float64), refs[what]
        msg = f"{what} at x={x64.tolist()}: {a64.tolist()}, reference {r.tolist()}"
        assert a.dtype == np_dtype(name)
        np.testing.assert_array_equal(np.isnan(a64), np.isnan(r), err_msg=msg)
        fmax = float(ml_dtypes.finfo(np_dtype(name)).max)
        in_range = np.isfinite(r) & (np.abs(r) <= fmax)  # beyond finfo.max: ±inf allowed
        assert np.all(np.isfinite(a64)[in_range]), msg
        assert not np.isfinite(a64[~np.isfinite(r)]).any(), msg
        inf = np.isinf(r)
        np.testing.assert_array_equal(a64[inf], r[inf], err_msg=msg)
        assert errors[what].max() <= tol[what], f"{msg}: {_worst(x, errors[what])}"


# ----------------------------------------------------------------------------------------
# Dtypes and argument errors.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize("entry", ENTRIES)
def test_integers_and_bools_promote_like_the_peer(entry, dtype):
    x = jnp.asarray([0, 1, 1, 0], dtype) if dtype == jnp.bool_ else jnp.arange(4, dtype=dtype)
    try:
        expected = (entry.promotes_like or entry.peer or jax.nn.softplus)(x).dtype
    except TypeError:  # jax.nn.log_sigmoid rejects bool (jnp.negative): as jax.nn.softplus
        expected = jax.nn.softplus(x).dtype
    y = entry.fn(x)  # promotion comes before the policy: the default stands for all
    assert y.dtype == expected, (y.dtype, expected)
    np.testing.assert_array_equal(y, entry.fn(x.astype(expected)))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), entry.reference(np.asarray(x, np.float64)), rtol=1e-6
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_complex_input_raises_type_error(entry):
    for dtype in (jnp.complex64, jnp.complex128):
        with pytest.raises(TypeError, match=jnp.dtype(dtype).name):
            entry.fn(jnp.ones(2, dtype))


@pytest.mark.parametrize("entry", ENTRIES)
def test_invalid_residual_and_mode_name_the_choices(entry):
    x = jnp.ones(2, jnp.float32)
    # The registry's policies, in its order (the default first), are the function's choices.
    choices = ", ".join(repr(r) for r in entry.residuals)
    with pytest.raises(ValueError, match=f"residual must be one of {choices}; got 'nope'"):
        entry.fn(x, residual="nope")
    with pytest.raises(ValueError, match="mode must be one of 'vjp', 'jvp'; got 'nope'"):
        entry.fn(x, mode="nope")
    default = next(iter(entry.residuals))
    np.testing.assert_array_equal(entry.fn(x), entry.fn(x, residual=default, mode="vjp"))


# ----------------------------------------------------------------------------------------
# The naive formula and the peer.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float16", "float32"])
@pytest.mark.parametrize(
    "entry", [e for e in registry.ENTRIES if e.naive is not None], ids=lambda e: e.name
)
def test_naive_formula_fails_where_ours_does_not(entry, name):
    xs, n = _inputs(entry.name, name)
    x = xs[:n]
    y, g = (np.asarray(a, np.float64) for a in _value_and_grad(entry.naive, x))
    bad = ~(np.isfinite(y) & np.isfinite(g))
    if not entry.naive_nonfinite:
        assert not bad.any(), f"naive non-finite at x={x[bad][:5]}"
        return
    assert bad.any(), f"the naive {entry.name} is finite over the whole {name} sweep"
    default = next(iter(entry.residuals))
    ours_y, ours_g = (a[:n].astype(np.float64) for a in _run(entry.name, default, "vjp", name))
    with np.errstate(all="ignore"):  # where the true value is beyond finfo.max, inf is right
        bad &= np.abs(entry.reference(x.astype(np.float64))) <= float(
            ml_dtypes.finfo(np_dtype(name)).max
        )
    assert np.all(np.isfinite(ours_y[bad])) and np.all(np.isfinite(ours_g[bad]))


@pytest.mark.parametrize("name", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "entry", [e for e in registry.ENTRIES if e.peer is not None], ids=lambda e: e.name
)
def test_at_least_as_accurate_as_the_peer(entry, name):
    xs, n = _inputs(entry.name, name)
    x = xs[:n]
    default = next(iter(entry.residuals))
    # An entry whose default slope comes from its rounded output (output_slope) promises
    # the exact slope with "input": that one is held to the peer's.
    policy = "input" if entry.output_slope is not None else default
    y, g = (a[:n] for a in _run(entry.name, policy, "vjp", name))
    py, pg = (np.asarray(a) for a in _value_and_grad(entry.peer, x))
    ours, peer = _errors(entry, x, y, g, name), _errors(entry, x, py, pg, name)
    for what, o, p in zip(("forward", "gradient"), ours, peer):
        assert o.max() <= p.max(), f"{what}: ours {_worst(x, o)}, peer {_worst(x, p)}"
