"""Property-based tests: finite in, finite out; dtype kept; monotone; gradient in [0, 1]."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stable_layers as sl
from helpers import np_dtype

POLICIES = st.sampled_from([(r, m) for r in ("output", "input") for m in ("vjp", "jvp")])
DTYPES = st.sampled_from(["float16", "float32", "float64"])  # bfloat16: below, via float32


def finite_arrays(dtype):
    return hnp.arrays(
        np_dtype(dtype),
        st.sampled_from([1, 5, 16]),
        elements=st.floats(
            allow_nan=False, allow_infinity=False, width=np_dtype(dtype).itemsize * 8
        ),
    )


@st.composite
def inputs(draw):
    name = draw(DTYPES)
    x = draw(finite_arrays(name))
    if draw(st.booleans()) and name == "float32":
        return "bfloat16", x.astype(np_dtype("bfloat16"))
    return name, x


@settings(max_examples=40, deadline=None)
@given(inputs(), POLICIES, st.sampled_from([1.0, 0.25, 3.0]))
def test_softplus_finite_in_finite_out(data, policy, beta):
    name, x = data
    residual, mode = policy
    f = functools.partial(sl.softplus, beta=beta, residual=residual, mode=mode)
    xj = jnp.asarray(x)
    y = f(xj)
    g = jax.grad(lambda x: jnp.sum(f(x)))(xj)
    assert y.dtype == np_dtype(name) and g.dtype == np_dtype(name)
    y64, g64 = np.asarray(y, np.float64), np.asarray(g, np.float64)
    assert np.all(np.isfinite(y64)) and np.all(np.isfinite(g64))
    assert np.all(y64 >= 0)
    assert np.all((g64 >= 0) & (g64 <= 1))
    # monotone: sorting the inputs sorts the outputs
    order = np.argsort(x.astype(np.float64), kind="stable")
    assert np.all(np.diff(y64[order]) >= 0)
    # softplus(x) >= max(x, 0)
    assert np.all(y64 >= np.maximum(x.astype(np.float64), 0) * (1 - 2**-7))


@settings(max_examples=40, deadline=None)
@given(
    inputs(),
    st.sampled_from(["derivative", "input_and_sin", "input"]),
    st.sampled_from(["vjp", "jvp"]),
)
def test_xsin_finite_in_finite_out(data, residual, mode):
    name, x = data
    f = functools.partial(sl.xsin, residual=residual, mode=mode)
    xj = jnp.asarray(x)
    y = f(xj)
    g = jax.grad(lambda x: jnp.sum(f(x)))(xj)
    assert y.dtype == np_dtype(name) and g.dtype == np_dtype(name)
    y64 = np.asarray(y, np.float64)
    assert np.all(np.isfinite(y64)) and np.all(np.isfinite(np.asarray(g, np.float64)))
    ax = np.abs(x.astype(np.float64))
    assert np.all(np.abs(y64) - ax <= ax * 2**-7)  # |x sin x| <= |x|, up to rounding
