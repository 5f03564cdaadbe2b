"""Accuracy: max error in ulps against float64 references over the dense sweeps of _testing.

One definition of the sweep, the references and the ulp (``stable_layers._testing``), shared
with the test suite. Forward and gradient (``vjp`` with a cotangent of ones), per dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from helpers import (
    np_dtype,
    sigmoid_ref,
    softplus_ref,
    sweep,
    ulp_error,
    xsin_grad_ref,
    xsin_ref,
)

DTYPES = ("float32", "bfloat16", "float16")
REFS = {"softplus": (softplus_ref, sigmoid_ref), "xsin": (xsin_ref, xsin_grad_ref)}


def _summary(actual, ref, dtype_name: str) -> dict:
    a = np.asarray(actual).astype(np.float64)
    r = np.asarray(ref, dtype=np.float64)
    finite_ref = np.isfinite(r)
    bad = finite_ref & ~np.isfinite(a)
    ok = finite_ref & np.isfinite(a)
    err = ulp_error(a[ok], r[ok], dtype_name)
    return {
        "max_ulp": float(err.max()) if err.size else 0.0,
        "p99_9_ulp": float(np.percentile(err, 99.9)) if err.size else 0.0,
        "nonfinite_points": int(bad.sum()),
        "points": int(finite_ref.sum()),
    }


def sweep_for(family: str, dtype_name: str, n: int) -> np.ndarray:
    x = sweep(dtype_name, n=n)
    # XLA on CPU treats subnormal inputs as zero (denormals-are-zero), every kernel alike:
    # x*sin(x) of a subnormal bfloat16 x is then 0 where the reference is a normal 2x-ish
    # number. A property of the backend, not of a formula, so those inputs are left out.
    tiny = float(ml_dtypes.finfo(np_dtype(dtype_name)).tiny)
    xf = np.abs(x.astype(np.float64))
    x = x[(xf == 0) | (xf >= tiny)]
    if family == "xsin":
        # sin(x) for |x| beyond ~1e5 depends on the backend's argument reduction, not on the
        # formula; the activation's useful range is far smaller. Compare on |x| <= 1e4.
        x = x[np.abs(x.astype(np.float64)) <= 1e4]
    return x


def jax_accuracy(fn, family: str, dtype_name: str, n: int) -> dict:
    x64 = sweep_for(family, dtype_name, n)
    x = jnp.asarray(x64)

    @jax.jit
    def fwd_grad(x):
        y, vjp = jax.vjp(fn, x)
        return y, vjp(jnp.ones_like(y))[0]

    y, g = fwd_grad(x)
    ref_f, ref_g = REFS[family]
    xr = x64.astype(np.float64)
    return {
        "forward": _summary(y, ref_f(xr), dtype_name),
        "gradient": _summary(g, ref_g(xr), dtype_name),
    }


def torch_accuracy(torch, fn, family: str, dtype_name: str, n: int) -> dict:
    x64 = sweep_for(family, dtype_name, n)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    xt = torch.from_numpy(x64.astype(np.float32)).to(tdt[dtype_name]).requires_grad_(True)
    y = fn(xt)
    (g,) = torch.autograd.grad(y, xt, torch.ones_like(y))

    def to_np(t):
        return t.detach().to(torch.float64).numpy()

    ref_f, ref_g = REFS[family]
    xr = x64.astype(np.float64)
    assert np.array_equal(to_np(xt), xr)
    return {
        "forward": _summary(to_np(y), ref_f(xr), dtype_name),
        "gradient": _summary(to_np(g), ref_g(xr), dtype_name),
    }


__all__ = ["DTYPES", "jax_accuracy", "np_dtype", "torch_accuracy"]
