"""stable_layers.linen: drop-in use, learnable β, dtypes and argument checks.

References are independent of the kernels: the same networks in float64 with
``jnp.logaddexp``, and central finite differences on the stored parameter.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F32, F64, assert_tree_close, big_inputs, naive_overflows, ref_softplus

import stable_layers as sl
from stable_layers.linen import Softplus, XSin

KEY = jax.random.key(0)


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


# ----------------------------------------------------------------------------------------
# Variables: none unless learnable, then exactly one parameter.
# ----------------------------------------------------------------------------------------


def test_no_variables_unless_learnable():
    x = jnp.ones((2, 3), F32)
    for m in (Softplus(), Softplus(2.0, 30.0, residual="input", mode="jvp"), XSin()):
        assert jax.tree.leaves(m.init(KEY, x)) == []


@pytest.mark.parametrize("param_dtype", [F32, F64, BF16])
def test_learnable_holds_one_param_in_param_dtype(param_dtype):
    variables = Softplus(2.5, learnable=True, param_dtype=param_dtype).init(KEY, jnp.ones(3, F32))
    assert list(variables) == ["params"] and list(variables["params"]) == ["log_beta"]
    leaf = variables["params"]["log_beta"]
    assert leaf.shape == () and leaf.dtype == jnp.dtype(param_dtype)
    eps = float(jnp.finfo(param_dtype).eps)
    np.testing.assert_allclose(float(jnp.exp(leaf.astype(F64))), 2.5, rtol=2 * 2.5 * eps)


# ----------------------------------------------------------------------------------------
# Drop-in: flax.linen.Sequential, under jit and jax.grad on the params.
# ----------------------------------------------------------------------------------------


def sequential(learnable, mode):
    return nn.Sequential(
        [
            nn.Dense(16),
            Softplus(mode=mode),
            nn.Dense(16),
            Softplus(1.5, learnable=learnable, mode=mode),
            nn.Dense(1),
        ]
    )


def ref_sequential(params, x):
    def dense(p, h):
        return h @ p["kernel"] + p["bias"]

    act = params.get("layers_3", {})
    beta = jnp.exp(act["log_beta"]) if "log_beta" in act else 1.5
    h = ref_softplus(dense(params["layers_0"], x), 1.0)
    h = ref_softplus(dense(params["layers_2"], h), beta)
    return dense(params["layers_4"], h)


@pytest.mark.parametrize("learnable, mode", [(True, "vjp"), (False, "jvp")])
def test_sequential_drop_in_jit_and_grad(learnable, mode):
    model = sequential(learnable, mode)
    x = big_inputs()
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    assert ("layers_3" in params) == learnable
    p0 = jax.tree.map(np.asarray, params["layers_0"])
    assert naive_overflows(np.asarray(x) @ p0["kernel"] + p0["bias"])

    y, grads = outputs_and_grads(lambda p, x: model.apply({"params": p}, x), params, x)
    y_ref, grads_ref = outputs_and_grads(ref_sequential, to_f64(params), x.astype(F64))
    assert y.dtype == F32
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)
    if learnable:
        assert grads["layers_3"]["log_beta"].dtype == F32


def test_xsin_in_sequential():
    model = nn.Sequential([nn.Dense(8), XSin(), nn.Dense(1)])
    x = jnp.asarray(np.random.default_rng(5).normal(size=(16, 3)), F32)
    params = jax.jit(model.init)(jax.random.key(4), x)["params"]

    def ref(p, x):
        h = x @ p["layers_0"]["kernel"] + p["layers_0"]["bias"]
        return (h * jnp.sin(h)) @ p["layers_2"]["kernel"] + p["layers_2"]["bias"]

    y, grads = outputs_and_grads(lambda p, x: model.apply({"params": p}, x), params, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(params), x.astype(F64))
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)


def test_inside_compact_module():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4)(x)
            h = Softplus(2.0, learnable=True)(h)
            return nn.Dense(1)(h)

    x = big_inputs(8, 3, seed=6)
    variables = jax.jit(Block().init)(KEY, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    np.testing.assert_allclose(np.exp(p["Softplus_0"]["log_beta"]), 2.0, rtol=1e-7)
    h = np.asarray(x, np.float64) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    assert naive_overflows(h)
    y_ref = np.logaddexp(0.0, 2.0 * h) / 2.0 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    assert_tree_close(jax.jit(Block().apply)(variables, x), y_ref, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Learnable β: finite differences on the stored parameter.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, residual", [("vjp", "input"), ("jvp", "output")])
def test_learnable_beta_grad_matches_central_difference(mode, residual):
    x = jnp.asarray(np.random.default_rng(0).normal(size=64) * 20, F64)
    w = jnp.asarray(np.random.default_rng(1).normal(size=64), F64)
    m = Softplus(0.7, learnable=True, residual=residual, mode=mode, param_dtype=F64)
    params = m.init(KEY, x)["params"]

    @jax.jit
    def loss(p):
        return jnp.sum(w * m.apply({"params": p}, x))

    g = jax.jit(jax.grad(loss))(params)["log_beta"]
    h = 1e-6
    lb = params["log_beta"]
    fd = (loss({"log_beta": lb + h}) - loss({"log_beta": lb - h})) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-7)


# ----------------------------------------------------------------------------------------
# dtypes and forward mode.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_bfloat16_in_bfloat16_out(learnable):
    m = Softplus(2.0, learnable=learnable)
    x = jnp.array([-500.0, -3.0, 0.0, 0.5, 3.0, 500.0], BF16)
    variables = m.init(KEY, x)
    y = jax.jit(m.apply)(variables, x)
    assert y.dtype == BF16
    beta = 2.0 if not learnable else float(jnp.exp(variables["params"]["log_beta"]).astype(BF16))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref_softplus(np.asarray(x, np.float64), beta), rtol=2**-8
    )
    gx = jax.jit(jax.grad(lambda x: jnp.sum(m.apply(variables, x))))(x)
    assert gx.dtype == BF16
    if learnable:
        g = jax.jit(jax.grad(lambda v: jnp.sum(m.apply(v, x).astype(F32))))(variables)
        assert g["params"]["log_beta"].dtype == F32
        assert bool(jnp.isfinite(g["params"]["log_beta"]))
    assert XSin().apply({}, x).dtype == BF16


def test_jvp_mode_supports_forward_mode_and_hessian():
    x = jnp.array([-40.0, -1.0, 0.0, 2.0, 40.0], F64)
    m = Softplus(2.0, mode="jvp")
    # d²/dx² softplus_β(x) = β e^-|βx| / (1 + e^-|βx|)², in float64 by the textbook formula.
    e = np.exp(-np.abs(2.0 * np.asarray(x)))
    hess = jax.jit(jax.hessian(lambda x: jnp.sum(m.apply({}, x))))(x)
    np.testing.assert_allclose(np.diag(hess), 2.0 * e / (1 + e) ** 2, rtol=1e-12)
    _, tangent = jax.jit(lambda x: jax.jvp(lambda x: m.apply({}, x), (x,), (jnp.ones_like(x),)))(x)
    s = np.where(np.asarray(x) >= 0, 1, e) / (1 + e)
    np.testing.assert_allclose(tangent, s, rtol=1e-14)


def test_call_matches_functional_kernel():
    x = jnp.linspace(-200, 200, 41, dtype=F32)
    m = Softplus(3.0, 15.0, residual="input", mode="jvp")
    np.testing.assert_array_equal(
        m.apply({}, x), sl.softplus(x, beta=3.0, threshold=15.0, residual="input", mode="jvp")
    )
    np.testing.assert_array_equal(XSin(residual="input").apply({}, x), sl.xsin(x, residual="input"))


# ----------------------------------------------------------------------------------------
# Bad arguments fail when the layer is built (so before init), naming argument and choices.
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
    (dict(beta="2"), TypeError, r"beta must be a positive finite number .*got '2'"),
    (dict(threshold=float("nan")), ValueError, r"threshold must be None or a real number; got nan"),
    (dict(learnable="yes"), TypeError, r"learnable must be True or False; got 'yes'"),
    (dict(param_dtype=jnp.int32), ValueError, r"param_dtype must be a floating dtype .*int32"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_SOFTPLUS)
def test_softplus_bad_arguments_fail_before_init(kwargs, exc, match):
    with pytest.raises(exc, match=r"stable_layers\.linen\.Softplus: " + match):
        Softplus(**kwargs).init(KEY, jnp.ones(3, F32))


def test_bad_argument_inside_sequential_fails_at_construction():
    with pytest.raises(ValueError, match=r"linen\.Softplus: mode must be one of 'vjp', 'jvp'"):
        nn.Sequential([nn.Dense(4), Softplus(mode="forward")])


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
def test_xsin_bad_arguments_fail_before_init(kwargs, match):
    with pytest.raises(ValueError, match=r"stable_layers\.linen\.XSin: " + match):
        XSin(**kwargs).init(KEY, jnp.ones(3, F32))


def test_positional_and_keyword_only_fields():
    m = Softplus(2.0, 20.0)
    assert (m.beta, m.threshold) == (2.0, 20.0)
    with pytest.raises(TypeError):
        Softplus(2.0, 20.0, True)
    with pytest.raises(TypeError):
        XSin("input")
