"""stable_layers.nnx: drop-in use, learnable β, dtypes and argument checks.

References are independent of the kernels: the same networks in float64 with
``jnp.logaddexp``, and central finite differences on the stored parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import BF16, F32, F64, assert_tree_close, big_inputs, naive_overflows, ref_softplus

import stable_layers as sl
from stable_layers.nnx import Softplus, XSin


def to_f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def outputs_and_grads(forward, params, x):
    """forward(params, x) and the gradient of mean(forward(params, x)²), in one jit."""

    @jax.jit
    def run(params, x):
        def loss(p):
            y = forward(p, x)
            return jnp.mean(y**2), y

        (_, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return y, grads

    return run(params, x)


def module_outputs_and_grads(model, x):
    """model(x) and the nnx.grad of mean(model(x)²), in one nnx.jit; grads as a pure dict."""

    @nnx.jit
    def run(m, x):
        def loss(m):
            y = m(x)
            return jnp.mean(y**2), y

        (_, y), grads = nnx.value_and_grad(loss, has_aux=True)(m)
        return y, grads

    y, grads = run(model, x)
    return y, nnx.to_pure_dict(grads)["layers"]


def params_dict(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ----------------------------------------------------------------------------------------
# State: no Param unless learnable, then exactly one.
# ----------------------------------------------------------------------------------------


def test_no_state_unless_learnable():
    for m in (Softplus(), Softplus(2.0, 30.0, residual="input", mode="jvp"), XSin()):
        assert jax.tree.leaves(nnx.state(m)) == []
        assert m.__dict__.get("log_beta") is None


@pytest.mark.parametrize("param_dtype", [F32, F64, BF16])
def test_learnable_holds_one_param_in_param_dtype(param_dtype):
    m = Softplus(2.5, learnable=True, param_dtype=param_dtype)
    assert isinstance(m.log_beta, nnx.Param)
    assert list(params_dict(m)) == ["log_beta"]
    assert len(jax.tree.leaves(nnx.state(m))) == 1
    leaf = m.log_beta[...]
    assert leaf.shape == () and leaf.dtype == jnp.dtype(param_dtype)
    eps = float(jnp.finfo(param_dtype).eps)
    np.testing.assert_allclose(float(jnp.exp(leaf.astype(F64))), 2.5, rtol=2 * 2.5 * eps)


# ----------------------------------------------------------------------------------------
# Drop-in: nnx.Sequential, under nnx.jit and nnx.grad.
# ----------------------------------------------------------------------------------------


def sequential(learnable, mode):
    rngs = nnx.Rngs(1)
    return nnx.Sequential(
        nnx.Linear(2, 16, rngs=rngs),
        Softplus(mode=mode),
        nnx.Linear(16, 16, rngs=rngs),
        Softplus(1.5, learnable=learnable, mode=mode),
        nnx.Linear(16, 1, rngs=rngs),
    )


def ref_sequential(p, x):
    def linear(q, h):
        return h @ q["kernel"] + q["bias"]

    beta = jnp.exp(p[3]["log_beta"]) if 3 in p else 1.5
    h = ref_softplus(linear(p[0], x), 1.0)
    h = ref_softplus(linear(p[2], h), beta)
    return linear(p[4], h)


@pytest.mark.parametrize("learnable, mode", [(True, "vjp"), (False, "jvp")])
def test_sequential_drop_in_jit_and_grad(learnable, mode):
    model = sequential(learnable, mode)
    x = big_inputs()
    p = params_dict(model)["layers"]
    assert (3 in p) == learnable
    p0 = jax.tree.map(np.asarray, p[0])
    assert naive_overflows(np.asarray(x) @ p0["kernel"] + p0["bias"])

    y, grads = module_outputs_and_grads(model, x)
    y_ref, grads_ref = outputs_and_grads(ref_sequential, to_f64(p), x.astype(F64))
    assert y.dtype == F32
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)
    if learnable:
        assert grads[3]["log_beta"].dtype == F32


def test_xsin_in_sequential():
    rngs = nnx.Rngs(4)
    model = nnx.Sequential(nnx.Linear(3, 8, rngs=rngs), XSin(), nnx.Linear(8, 1, rngs=rngs))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(16, 3)), F32)
    p = params_dict(model)["layers"]

    def ref(p, x):
        h = x @ p[0]["kernel"] + p[0]["bias"]
        return (h * jnp.sin(h)) @ p[2]["kernel"] + p[2]["bias"]

    y, grads = module_outputs_and_grads(model, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(p), x.astype(F64))
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Learnable β: finite differences on the stored parameter; an optimiser step.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, residual", [("vjp", "output"), ("jvp", "input")])
def test_learnable_beta_grad_matches_central_difference(mode, residual):
    x = jnp.asarray(np.random.default_rng(0).normal(size=64) * 20, F64)
    w = jnp.asarray(np.random.default_rng(1).normal(size=64), F64)
    m = Softplus(0.7, learnable=True, residual=residual, mode=mode, param_dtype=F64)

    @nnx.jit
    def loss(m):
        return jnp.sum(w * m(x))

    g = nnx.jit(nnx.grad(loss))(m)["log_beta"][...]
    h, lb = 1e-6, m.log_beta[...]
    m.log_beta[...] = lb + h
    plus = loss(m)
    m.log_beta[...] = lb - h
    minus = loss(m)
    np.testing.assert_allclose(float(g), float((plus - minus) / (2 * h)), rtol=1e-7)


def test_optimizer_step_updates_beta_and_keeps_it_positive():
    m = Softplus(learnable=True)
    x = jnp.linspace(-3, 3, 7, dtype=F32)
    opt = nnx.Optimizer(m, optax.sgd(10.0), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        # Raising β lowers sum softplus_β(x), so ascent on it drives log β far negative.
        g = nnx.grad(lambda m: -jnp.sum(m(x)))(m)
        opt.update(m, g)

    step(m, opt)
    lb = float(m.log_beta[...])
    assert lb < -20
    beta = float(np.exp(lb))
    assert beta > 0
    np.testing.assert_allclose(m(x), ref_softplus(x.astype(F64), beta), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# dtypes (including nnx's dtype argument) and forward mode.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_bfloat16_in_bfloat16_out(learnable):
    m = Softplus(2.0, learnable=learnable)
    x = jnp.array([-500.0, -3.0, 0.0, 0.5, 3.0, 500.0], BF16)
    y = nnx.jit(lambda m, x: m(x))(m, x)
    assert y.dtype == BF16
    beta = 2.0 if not learnable else float(jnp.exp(m.log_beta[...]).astype(BF16))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref_softplus(np.asarray(x, np.float64), beta), rtol=2**-8
    )
    gx = jax.jit(jax.grad(lambda x: jnp.sum(m(x))))(x)
    assert gx.dtype == BF16
    if learnable:
        g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x).astype(F32))))(m)["log_beta"][...]
        assert g.dtype == F32 and bool(jnp.isfinite(g))
    assert XSin()(x).dtype == BF16


@pytest.mark.parametrize("learnable", [False, True])
def test_dtype_argument_sets_the_computation_dtype(learnable):
    x = jnp.linspace(-200, 200, 9, dtype=F32)
    m = Softplus(2.0, learnable=learnable, dtype=BF16)
    y = m(x)
    assert y.dtype == BF16
    # Same as casting the input by hand and leaving dtype unset.
    m_plain = Softplus(2.0, learnable=learnable)
    np.testing.assert_array_equal(y, m_plain(x.astype(BF16)))
    assert Softplus(dtype=F64)(x).dtype == F64


def test_jvp_mode_supports_forward_mode_and_hessian():
    x = jnp.array([-40.0, -1.0, 0.0, 2.0, 40.0], F64)
    m = Softplus(2.0, mode="jvp")
    # d²/dx² softplus_β(x) = β e^-|βx| / (1 + e^-|βx|)², in float64 by the textbook formula.
    e = np.exp(-np.abs(2.0 * np.asarray(x)))
    hess = jax.jit(jax.hessian(lambda x: jnp.sum(m(x))))(x)
    np.testing.assert_allclose(np.diag(hess), 2.0 * e / (1 + e) ** 2, rtol=1e-12)
    _, tangent = jax.jit(lambda x: jax.jvp(m, (x,), (jnp.ones_like(x),)))(x)
    s = np.where(np.asarray(x) >= 0, 1, e) / (1 + e)
    np.testing.assert_allclose(tangent, s, rtol=1e-14)


def test_call_matches_functional_kernel():
    x = jnp.linspace(-200, 200, 41, dtype=F32)
    m = Softplus(3.0, 15.0, residual="input", mode="jvp")
    np.testing.assert_array_equal(
        m(x), sl.softplus(x, beta=3.0, threshold=15.0, residual="input", mode="jvp")
    )
    np.testing.assert_array_equal(XSin(residual="input")(x), sl.xsin(x, residual="input"))


# ----------------------------------------------------------------------------------------
# Bad arguments fail in __init__, naming the argument, the value and the choices.
# ----------------------------------------------------------------------------------------

BAD_SOFTPLUS = [
    (
        dict(residual="outptu"),
        ValueError,
        r"residual must be one of 'output', 'input'; got 'outptu'",
    ),
    (dict(mode="rev"), ValueError, r"mode must be one of 'vjp', 'jvp'; got 'rev'"),
    (dict(beta=0.0), ValueError, r"beta must be a positive finite number; got 0\.0"),
    (dict(beta=-1.0), ValueError, r"beta must be a positive finite number; got -1\.0"),
    (dict(beta=float("nan")), ValueError, r"beta must be a positive finite number; got nan"),
    (dict(beta=jnp.array(2.0)), TypeError, r"beta must be a positive finite number"),
    (dict(threshold=float("nan")), ValueError, r"threshold must be None or a real number; got nan"),
    (dict(learnable=1), TypeError, r"learnable must be True or False; got 1"),
    (dict(param_dtype=jnp.int32), ValueError, r"param_dtype must be a floating dtype .*int32"),
    (dict(param_dtype="complex64"), ValueError, r"param_dtype must be a floating dtype"),
    (dict(dtype=jnp.int8), ValueError, r"dtype must be a floating dtype .*, or None; got .*int8"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_SOFTPLUS)
def test_softplus_bad_arguments_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=r"stable_layers\.nnx\.Softplus: " + match):
        Softplus(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(residual="output"),
            r"residual must be one of 'derivative', 'input_and_sin', 'input'",
        ),
        (dict(mode="fwd"), r"mode must be one of 'vjp', 'jvp'; got 'fwd'"),
    ],
)
def test_xsin_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=r"stable_layers\.nnx\.XSin: " + match):
        XSin(**kwargs)


def test_positional_and_keyword_only_signature():
    m = Softplus(2.0, 20.0)
    assert (m.beta, m.threshold) == (2.0, 20.0)
    with pytest.raises(TypeError):
        Softplus(2.0, 20.0, True)
    with pytest.raises(TypeError):
        XSin("input")
