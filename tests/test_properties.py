"""Property-based tests for every entry of ``tests/registry.py``: finite in, finite out; the
dtype kept; monotone where the entry is; and each entry's own range (softplus with β too).

Arrays have 16 elements (the kernels are elementwise), so each dtype x policy x mode compiles
once and the examples after that cost microseconds.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import registry
from helpers import np_dtype
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stable_layers as sl

DTYPES = st.sampled_from(["float16", "float32", "float64"])  # bfloat16: below, via float32
ENTRIES = [pytest.param(e, id=e.name) for e in registry.ENTRIES]


def finite_arrays(dtype):
    return hnp.arrays(
        np_dtype(dtype),
        16,
        elements=st.floats(
            allow_nan=False, allow_infinity=False, width=np_dtype(dtype).itemsize * 8
        ),
    )


@st.composite
def inputs(draw):
    name = draw(DTYPES)
    x = draw(finite_arrays(name))
    if draw(st.booleans()) and name == "float32":
        # Clipped first: float32 values above bfloat16's max would round to inf.
        big = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
        return "bfloat16", np.clip(x, -big, big).astype(np_dtype("bfloat16"))
    return name, x


@functools.cache
def value_and_grad(fn, **kwargs):
    f = functools.partial(fn, **kwargs)
    return jax.jit(lambda x: (f(x), jax.grad(lambda x: jnp.sum(f(x)))(x)))


def run(fn, name, x, **kwargs):
    y, g = value_and_grad(fn, **kwargs)(jnp.asarray(x))
    assert y.dtype == np_dtype(name) and g.dtype == np_dtype(name)
    y64, g64 = np.asarray(y, np.float64), np.asarray(g, np.float64)
    assert np.all(np.isfinite(y64)) and np.all(np.isfinite(g64))
    return y64, g64


def assert_monotone(x, y64):
    """Sorting the inputs sorts the outputs."""
    order = np.argsort(x.astype(np.float64), kind="stable")
    assert np.all(np.diff(y64[order]) >= 0)


def _softplus_range(x, y, g):
    assert np.all(y >= 0)
    assert np.all((g >= 0) & (g <= 1))
    assert np.all(y >= np.maximum(x, 0) * (1 - 2**-7))  # softplus(x) >= max(x, 0)


def _log_sigmoid_range(x, y, g):
    assert np.all(y <= 0)
    assert np.all((g >= 0) & (g <= 1))
    assert np.all(y <= np.minimum(x, 0) * (1 - 2**-7))  # log_sigmoid(x) <= min(x, 0)


def _xsin_range(x, y, g):
    ax = np.abs(x)
    assert np.all(np.abs(y) - ax <= ax * 2**-7)  # |x sin x| <= |x|, up to rounding


# An entry's own range, where it has one (optional: a new entry needs none).
RANGES = {"softplus": _softplus_range, "log_sigmoid": _log_sigmoid_range, "xsin": _xsin_range}


@pytest.mark.parametrize("entry", ENTRIES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_finite_in_finite_out(entry, data):
    name, x = data.draw(inputs())
    # Where the true value is beyond finfo.max (SELU's λx near it), inf is the right answer.
    with np.errstate(all="ignore"):
        over = np.abs(entry.reference(x.astype(np.float64))) > float(ml_dtypes.finfo(x.dtype).max)
    x = np.where(over, np.zeros_like(x), x)
    residual = data.draw(st.sampled_from(list(entry.residuals)))
    mode = data.draw(st.sampled_from(["vjp", "jvp"]))
    y64, g64 = run(entry.fn, name, x, residual=residual, mode=mode)
    if entry.monotone:
        assert_monotone(x, y64)
        assert np.all(g64 >= 0)
    if entry.name in RANGES:
        RANGES[entry.name](x.astype(np.float64), y64, g64)


@settings(max_examples=30, deadline=None)
@given(
    inputs(),
    st.sampled_from([(r, m) for r in ("output", "input") for m in ("vjp", "jvp")]),
    st.sampled_from([0.25, 3.0]),
)
def test_softplus_with_beta_finite_in_finite_out(data, policy, beta):
    name, x = data
    residual, mode = policy
    y64, g64 = run(sl.softplus, name, x, beta=beta, residual=residual, mode=mode)
    assert_monotone(x, y64)
    _softplus_range(x.astype(np.float64), y64, g64)
