"""Private helpers shared by the tests and the benchmarks: sweeps, float64 references, ulps.

Not part of the public API. Kept in the package so the tests and ``benchmarks/`` measure
accuracy with one definition of an ulp.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def sweep(name: str, n: int = 1 << 20, limit: float | None = None) -> np.ndarray:
    """A dense sweep of finite inputs of dtype ``name``, sorted and unique.

    Half precision: every finite value (exhaustive). float32/float64: ``n`` points, half of
    them uniform on [-limit, limit] (default: where softplus changes regime) and half
    log-spaced in magnitude up to ±finfo.max, plus 0, ±tiny and ±max.
    """
    dt = np_dtype(name)
    fi = ml_dtypes.finfo(dt)
    if fi.bits == 16:
        with np.errstate(invalid="ignore"):  # the NaN bit patterns
            vals = np.arange(1 << 16, dtype=np.uint16).view(dt).astype(np.float64)
        vals = vals[np.isfinite(vals)]
    else:
        limit = 120.0 if limit is None else limit
        lo, hi = np.log10(float(fi.smallest_subnormal)), np.log10(float(fi.max))
        with np.errstate(over="ignore"):  # 10**hi may round past finfo.max
            mags = np.logspace(lo, hi, n // 4)
        mags = mags[mags <= float(fi.max)]
        lin = np.linspace(-limit, limit, n // 2)
        edges = [0.0, float(fi.tiny), -float(fi.tiny), float(fi.max), -float(fi.max)]
        vals = np.concatenate([lin, mags, -mags, edges]).astype(dt)
        vals = vals[np.isfinite(vals.astype(np.float64))]
    return np.unique(vals.astype(np.float64)).astype(dt)


def ulp_error(actual, reference, name: str, flush_subnormals: bool = True) -> np.ndarray:
    """|actual - reference| in units of the last place of ``name`` at ``reference``.

    ``reference`` is float64 (or better). Equal infinities and matching NaNs count as 0; a
    non-finite result where the reference is finite counts as inf. Below ``finfo.tiny`` the
    ulp is the subnormal spacing. With ``flush_subnormals`` (default) a result of 0 where the
    reference is subnormal counts as exact: XLA on CPU and GPU flushes subnormals to zero, for
    every kernel alike, so that is a property of the backend, not of a formula.
    """
    fi = ml_dtypes.finfo(np_dtype(name))
    a = np.asarray(actual).astype(np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if flush_subnormals:
        r = np.where((np.abs(r) < float(fi.tiny)) & (a == 0), 0.0, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        exp = np.floor(np.log2(np.abs(r)))
        exp = np.maximum(np.where(np.isfinite(exp), exp, fi.minexp), fi.minexp)
        ulp = np.ldexp(1.0, (exp - fi.nmant).astype(np.int64))
        err = np.abs(a - r) / ulp
    same = (a == r) | (np.isnan(a) & np.isnan(r))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


def softplus_ref(x, beta: float = 1.0) -> np.ndarray:
    """log(1 + exp(βx)) / β in float64 (relative error ~1e-16, far below a float32 ulp)."""
    z = beta * np.asarray(x, dtype=np.float64)
    return np.logaddexp(0.0, z) / beta


def sigmoid_ref(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def xsin_ref(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x * np.sin(x)


def xsin_grad_ref(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sin(x) + x * np.cos(x)
