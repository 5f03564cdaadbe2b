"""Parity with torch.nn.functional (issue 16): gelu (both forms), silu, mish, elu, celu, selu.

Values and gradients (a ones cotangent) agree within ``torch.testing.assert_close``'s default
tolerances for each dtype (those of torch's OpInfo tests: float16 rtol 1e-3, bfloat16 1.6e-2,
float32 1.3e-6, float64 1e-7; atol 1e-5 and 1e-7), in every dtype torch's CPU kernels support,
on reference inputs in the manner of OpInfo's ``reference_inputs`` for elementwise unary
functions: a dense grid, random values, small and large magnitudes, ±finfo.max, ±0, ±inf and
NaN. The ELU family is compared with ``residual="input"`` in half precision (the default
``"output"`` slope is that of the rounded output, by design).

Where torch's result is NaN (or overflows) but the function has a value or a limit, issue 16's
table decides, and the test asserts that ours is exactly that value or limit there (so the
exclusion cannot hide a bug of ours). Measured on torch 2.13 CPU: exact GELU at +inf is NaN in
float32 and bfloat16 (the table: +inf) and overflows to inf at finfo.max (true value
finfo.max); gradients at ±inf are NaN in several (-inf·0), and tanh-GELU's gradient is NaN at
±finfo.max (its backward forms x³), where the slope's limit is 1 or 0.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import stable_layers as sl

torch = pytest.importorskip("torch", reason="torch (the dev extra) is needed for parity")
F = torch.nn.functional

DTYPES = {
    "float16": (np.float16, torch.float16),
    "bfloat16": (ml_dtypes.bfloat16, torch.bfloat16),
    "float32": (np.float32, torch.float32),
    "float64": (np.float64, torch.float64),
}

SELU = "selu"
# (value at +inf, value at -inf, slope toward +inf, slope toward -inf): issue 16's table.
LIMITS = {
    "gelu": (np.inf, np.nan, 1.0, 0.0),
    "gelu_tanh": (np.inf, np.nan, 1.0, 0.0),
    "silu": (np.inf, np.nan, 1.0, 0.0),
    "mish": (np.inf, np.nan, 1.0, 0.0),
    "elu": (np.inf, -1.0, 1.0, 0.0),
    "elu_alpha0.5": (np.inf, -0.5, 1.0, 0.0),
    "celu_alpha2": (np.inf, -2.0, 1.0, 0.0),
    SELU: (np.inf, -1.0507009873554805 * 1.6732632423543772, 1.0507009873554805, 0.0),
}
CASES = {
    # name: (ours, torch's, ELU family)
    "gelu": (sl.gelu, F.gelu, False),
    "gelu_tanh": (
        functools.partial(sl.gelu, approximate=True),
        functools.partial(F.gelu, approximate="tanh"),
        False,
    ),
    "silu": (sl.silu, F.silu, False),
    "mish": (sl.mish, F.mish, False),
    "elu": (sl.elu, F.elu, True),
    "elu_alpha0.5": (
        functools.partial(sl.elu, alpha=0.5),
        functools.partial(F.elu, alpha=0.5),
        True,
    ),
    "celu_alpha2": (
        functools.partial(sl.celu, alpha=2.0),
        functools.partial(F.celu, alpha=2.0),
        True,
    ),
    SELU: (sl.selu, F.selu, True),
}


def reference_inputs(name: str) -> np.ndarray:
    """OpInfo-style reference inputs for an elementwise unary function, in dtype ``name``."""
    dt = DTYPES[name][0]
    fi = ml_dtypes.finfo(dt)
    rng = np.random.default_rng(0)
    mags = [0.0, float(fi.tiny), 1e-3, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    mags += [1e4, 3e4, float(fi.max)]
    pts = np.array(mags + [-m for m in mags] + [-0.0, np.inf, -np.inf, np.nan])
    grid = np.linspace(-20.0, 20.0, 801)
    rand = np.concatenate([rng.normal(scale=3.0, size=500), rng.uniform(-100, 100, 500)])
    with np.errstate(over="ignore"):
        x = np.concatenate([pts, grid, rand]).astype(dt)
    return x[np.isfinite(x.astype(np.float64)) | ~np.isfinite(np.concatenate([pts, grid, rand]))]


def _ours(fn, x, elu_family, name):
    kw = {"residual": "input"} if elu_family and name in ("float16", "bfloat16") else {}
    f = functools.partial(fn, **kw)

    def both(x):
        y, vjp = jax.vjp(f, x)
        return y, vjp(jnp.ones_like(y))[0]

    y, g = jax.jit(both)(jnp.asarray(x))
    return np.asarray(y), np.asarray(g)


def _torch(tfn, x, tdt):
    xt = torch.from_numpy(x.astype(np.float64)).to(tdt).requires_grad_(True)
    y = tfn(xt)
    y.backward(torch.ones_like(y))
    return y.detach(), xt.grad


def _to_torch(a, tdt):
    return torch.from_numpy(np.asarray(a).astype(np.float64)).to(tdt)  # exact: same dtype


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_torch(case, name):
    fn, tfn, elu_family = CASES[case]
    tdt = DTYPES[name][1]
    x = reference_inputs(name)
    try:
        ty, tg = _torch(tfn, x, tdt)
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - torch build
        pytest.skip(f"torch's CPU {case} has no {name} kernel here: {err}")
    y, g = _ours(fn, x, elu_family, name)
    x64 = x.astype(np.float64)
    up_v, low_v, up_g, low_g = LIMITS[case]
    dt = DTYPES[name][0]

    def limit(hi, lo):
        return np.where(x64 > 0, f64_in(hi, dt), f64_in(lo, dt))

    # Values: where torch's is NaN at ±inf but the table has a value, ours is that value;
    # where torch's overflows at ±finfo.max (exact GELU: x·(1 + erf)/2), ours is the true
    # value: x above 0 and 0 (the GELU forms, SiLU, Mish) or -α (ELU family) below.
    ty64, y64 = ty.to(torch.float64).numpy(), y.astype(np.float64)
    v_differs = (np.isnan(ty64) & ~np.isnan(y64)) | (np.isinf(ty64) & np.isfinite(y64))
    huge = np.abs(x64) >= float(ml_dtypes.finfo(dt).max)
    assert np.all(huge[v_differs]), x64[v_differs]
    scale = f64_in(up_g, dt)  # the slope above 0: 1, or SELU's λ
    with np.errstate(over="ignore"):  # SELU's λ·finfo.max is inf, in torch too
        above = x64 * scale
    expected = np.where(
        np.isinf(x64),
        limit(up_v, low_v),
        np.where(x64 > 0, above, 0.0 if np.isnan(low_v) else f64_in(low_v, dt)),
    )
    np.testing.assert_array_equal(y64[v_differs], expected[v_differs])
    keep = torch.from_numpy(~v_differs)
    torch.testing.assert_close(_to_torch(y, tdt)[keep], ty[keep], equal_nan=True)
    # Gradients: where torch's is NaN at ±inf or ±finfo.max (it computes -inf·0, or x³),
    # ours is the slope's limit. Everywhere else, torch's tolerance.
    tg64 = tg.to(torch.float64).numpy()
    g_differs = np.isnan(tg64) & ~np.isnan(x64)
    assert np.all(huge[g_differs]), x64[g_differs]
    np.testing.assert_array_equal(g.astype(np.float64)[g_differs], limit(up_g, low_g)[g_differs])
    keep = torch.from_numpy(~g_differs)
    torch.testing.assert_close(_to_torch(g, tdt)[keep], tg[keep], equal_nan=True)


def f64_in(v, dt):
    """``v`` rounded to ``dt``, as float64 (SELU's constants are not representable)."""
    return float(np.asarray(v, dtype=np.float64).astype(dt).astype(np.float64))
