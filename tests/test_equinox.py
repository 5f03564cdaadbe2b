"""stable_layers.equinox: drop-in use, learnable β, dtypes and argument checks.

References are independent of the kernels: the same networks in float64 with
``jnp.logaddexp`` (whose float64 range covers every pre-activation here), and central finite
differences on the stored parameter.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F32, F64, assert_tree_close, big_inputs, naive_overflows, ref_softplus

import stable_layers as sl
from stable_layers.equinox import Softplus, XSin

jit = eqx.filter_jit


def to_f64(tree):
    return jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a, np.float64)) if eqx.is_array(a) else a, tree
    )


def outputs_and_grads(forward, model, x):
    """forward(model, x) and the gradient of mean(forward(model, x)²), in one filter_jit."""

    @eqx.filter_jit
    def run(model, x):
        def loss(m):
            y = forward(m, x)
            return jnp.mean(y**2), y

        (_, y), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        return y, eqx.filter(grads, eqx.is_array)

    return run(model, x)


def batched(m, x):
    return jax.vmap(m)(x)


# ----------------------------------------------------------------------------------------
# State: no arrays unless learnable, then exactly one.
# ----------------------------------------------------------------------------------------


def test_no_arrays_unless_learnable():
    for m in (Softplus(), Softplus(2.0, 30.0, residual="input", mode="jvp"), XSin()):
        assert jax.tree.leaves(eqx.filter(m, eqx.is_array)) == []


@pytest.mark.parametrize("param_dtype", [F32, F64, BF16])
def test_learnable_holds_one_array_in_param_dtype(param_dtype):
    m = Softplus(2.5, learnable=True, param_dtype=param_dtype)
    (leaf,) = jax.tree.leaves(eqx.filter(m, eqx.is_array))
    assert leaf is m.log_beta
    assert leaf.shape == () and leaf.dtype == jnp.dtype(param_dtype)
    # β = exp(log_beta) starts at the beta argument, to within rounding of log β to param_dtype.
    eps = float(jnp.finfo(param_dtype).eps)
    np.testing.assert_allclose(float(jnp.exp(leaf.astype(F64))), 2.5, rtol=2 * 2.5 * eps)
    assert float(Softplus(learnable=True).log_beta) == 0.0


# ----------------------------------------------------------------------------------------
# Drop-in: eqx.nn.Sequential and eqx.nn.MLP, under filter_jit and filter_grad.
# ----------------------------------------------------------------------------------------


def sequential(key, learnable, mode):
    k0, k1, k2 = jax.random.split(key, 3)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(2, 16, dtype=F32, key=k0),
            Softplus(mode=mode),
            eqx.nn.Linear(16, 16, dtype=F32, key=k1),
            Softplus(1.5, learnable=learnable, mode=mode),
            eqx.nn.Linear(16, 1, dtype=F32, key=k2),
        ]
    )


def ref_sequential(model, x):
    lin0, _, lin1, act, lin2 = model.layers
    beta = 1.5 if act.log_beta is None else jnp.exp(act.log_beta)
    h = ref_softplus(x @ lin0.weight.T + lin0.bias, 1.0)
    h = ref_softplus(h @ lin1.weight.T + lin1.bias, beta)
    return h @ lin2.weight.T + lin2.bias


@pytest.mark.parametrize("learnable, mode", [(True, "vjp"), (False, "jvp")])
def test_sequential_drop_in_jit_and_grad(learnable, mode):
    model = sequential(jax.random.key(1), learnable, mode)
    x = big_inputs()
    lin0 = model.layers[0]
    assert naive_overflows(np.asarray(x) @ np.asarray(lin0.weight).T + np.asarray(lin0.bias))

    y, grads = outputs_and_grads(batched, model, x)
    y_ref, grads_ref = outputs_and_grads(ref_sequential, to_f64(model), x.astype(F64))
    assert y.dtype == F32
    assert_tree_close(y, y_ref, rtol=1e-5, same_structure=False)
    assert_tree_close(grads, grads_ref, rtol=1e-4, same_structure=False)
    if learnable:
        assert grads.layers[3].log_beta.dtype == F32 and grads.layers[3].log_beta != 0


def test_mlp_activation_is_per_neuron_and_trains():
    depth, width = 2, 8
    mlp = eqx.nn.MLP(
        2, 1, width, depth, activation=Softplus(learnable=True), dtype=F32, key=jax.random.key(2)
    )
    # eqx.nn.MLP copies the activation per hidden neuron: one log β per neuron.
    assert mlp.activation.log_beta.shape == (depth, width)
    # Give every neuron a different β so that the per-neuron indexing is exercised.
    lb = jnp.linspace(-0.5, 0.5, depth * width, dtype=F32).reshape(depth, width)
    mlp = eqx.tree_at(lambda m: m.activation.log_beta, mlp, lb)
    x = big_inputs(seed=3)
    assert naive_overflows(np.asarray(x) @ np.asarray(mlp.layers[0].weight).T)

    def ref(m, x):
        h = x
        for i, lin in enumerate(m.layers[:-1]):
            h = ref_softplus(h @ lin.weight.T + lin.bias, jnp.exp(m.activation.log_beta[i]))
        return h @ m.layers[-1].weight.T + m.layers[-1].bias

    y, grads = outputs_and_grads(batched, mlp, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(mlp), x.astype(F64))
    assert_tree_close(y, y_ref, rtol=1e-5, same_structure=False)
    assert grads.activation.log_beta.shape == (depth, width)
    assert_tree_close(grads, grads_ref, rtol=1e-4, same_structure=False)


def test_xsin_in_sequential():
    k0, k1 = jax.random.split(jax.random.key(4))
    model = eqx.nn.Sequential(
        [eqx.nn.Linear(3, 8, dtype=F32, key=k0), XSin(), eqx.nn.Linear(8, 1, dtype=F32, key=k1)]
    )
    x = jnp.asarray(np.random.default_rng(5).normal(size=(16, 3)), F32)

    def ref(m, x):
        h = x @ m.layers[0].weight.T + m.layers[0].bias
        return (h * jnp.sin(h)) @ m.layers[2].weight.T + m.layers[2].bias

    y, grads = outputs_and_grads(batched, model, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(model), x.astype(F64))
    assert_tree_close(y, y_ref, rtol=1e-5, same_structure=False)
    assert_tree_close(grads, grads_ref, rtol=1e-4, same_structure=False)


# ----------------------------------------------------------------------------------------
# Learnable β: finite differences on the stored parameter, positivity.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, residual", [("vjp", "output"), ("jvp", "input")])
def test_learnable_beta_grad_matches_central_difference(mode, residual):
    x = jnp.asarray(np.random.default_rng(0).normal(size=64) * 20, F64)
    w = jnp.asarray(np.random.default_rng(1).normal(size=64), F64)
    m = Softplus(0.7, learnable=True, residual=residual, mode=mode, param_dtype=F64)

    @jit
    def loss(m):
        return jnp.sum(w * m(x))

    g = jit(eqx.filter_grad(loss))(m).log_beta
    h = 1e-6
    plus = eqx.tree_at(lambda m: m.log_beta, m, m.log_beta + h)
    minus = eqx.tree_at(lambda m: m.log_beta, m, m.log_beta - h)
    fd = (loss(plus) - loss(minus)) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-7)


def test_learnable_beta_stays_positive_after_large_steps():
    m = Softplus(learnable=True)
    x = jnp.linspace(-3, 3, 7, dtype=F32)
    g = jit(eqx.filter_grad(lambda m: jnp.sum(m(x))))(m)
    # Steps of ±10 times the gradient move log β by about ±26: a step that size on β itself
    # would make it negative; β = exp(log β) stays positive (and, for |log β| < 87, finite
    # and normal in float32).
    for lr in (10.0, -10.0):
        m2 = eqx.apply_updates(m, jax.tree.map(lambda g: -lr * g, g))
        assert abs(float(m2.log_beta)) > 20
        beta = float(jnp.exp(m2.log_beta.astype(F64)))
        assert beta > 0
        y = jit(lambda m: m(x))(m2)
        assert bool(jnp.all(jnp.isfinite(y)))
        np.testing.assert_allclose(y, ref_softplus(x.astype(F64), beta), rtol=1e-5, atol=1e-30)


# ----------------------------------------------------------------------------------------
# dtypes and forward mode.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_bfloat16_in_bfloat16_out(learnable):
    m = Softplus(2.0, learnable=learnable)
    x = jnp.array([-500.0, -3.0, 0.0, 0.5, 3.0, 500.0], BF16)
    y = jit(lambda m: m(x))(m)
    assert y.dtype == BF16
    beta = 2.0 if not learnable else float(jnp.exp(m.log_beta).astype(BF16))
    np.testing.assert_allclose(
        np.asarray(y, np.float64), ref_softplus(np.asarray(x, np.float64), beta), rtol=2**-8
    )
    gx = jit(jax.grad(lambda x: jnp.sum(m(x))))(x)
    assert gx.dtype == BF16
    if learnable:
        g = jit(eqx.filter_grad(lambda m: jnp.sum(m(x).astype(F32))))(m)
        assert g.log_beta.dtype == F32 and bool(jnp.isfinite(g.log_beta))
    assert XSin()(x).dtype == BF16


def test_jvp_mode_supports_forward_mode_and_hessian():
    x = jnp.array([-40.0, -1.0, 0.0, 2.0, 40.0], F64)
    m = Softplus(2.0, mode="jvp")
    # d²/dx² softplus_β(x) = β sigmoid(βx) sigmoid(-βx) = β e^-|βx| / (1 + e^-|βx|)², float64.
    z = 2.0 * np.asarray(x)
    e = np.exp(-np.abs(z))
    s = np.where(z >= 0, 1, e) / (1 + e)
    hess = jit(jax.hessian(lambda x: jnp.sum(m(x))))(x)
    np.testing.assert_allclose(np.diag(hess), 2.0 * e / (1 + e) ** 2, rtol=1e-12)
    _, tangent = jit(lambda x: jax.jvp(m, (x,), (jnp.ones_like(x),)))(x)
    np.testing.assert_allclose(tangent, s, rtol=1e-14)

    # Second derivative in the stored log β, against a second central difference of the
    # float64 reference (truncation ~h², rounding ~1e-16 * 100 / h²: both < 1e-6).
    ml = Softplus(2.0, learnable=True, mode="jvp", param_dtype=F64)
    hess_b = jit(jax.hessian(lambda lb: jnp.sum(eqx.tree_at(lambda m: m.log_beta, ml, lb)(x))))(
        ml.log_beta
    )
    lb, h = float(ml.log_beta), 1e-4
    f = [float(jnp.sum(ref_softplus(x, np.exp(lb + k * h)))) for k in (-1, 0, 1)]
    np.testing.assert_allclose(float(hess_b), (f[0] - 2 * f[1] + f[2]) / h**2, rtol=1e-5)
    xs = XSin(mode="jvp")
    np.testing.assert_allclose(
        np.diag(jit(jax.hessian(lambda x: jnp.sum(xs(x))))(x)),
        2 * np.cos(np.asarray(x)) - np.asarray(x) * np.sin(np.asarray(x)),
        rtol=1e-12,
        atol=1e-12,
    )


def test_call_matches_functional_kernel():
    x = jnp.linspace(-200, 200, 41, dtype=F32)
    m = Softplus(3.0, 15.0, residual="input", mode="jvp")
    np.testing.assert_array_equal(
        m(x), sl.softplus(x, beta=3.0, threshold=15.0, residual="input", mode="jvp")
    )
    np.testing.assert_array_equal(XSin(residual="input")(x), sl.xsin(x, residual="input"))


# ----------------------------------------------------------------------------------------
# Bad arguments fail at construction, naming the argument, the value and the choices.
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
    (dict(beta=float("inf"), learnable=True), ValueError, r"beta must be .*; got inf"),
    (dict(beta="2"), TypeError, r"beta must be a positive finite number .*got '2'"),
    (dict(beta=jnp.array(2.0)), TypeError, r"beta must be a positive finite number"),
    (dict(threshold=float("nan")), ValueError, r"threshold must be None or a real number; got nan"),
    (dict(threshold="20"), ValueError, r"threshold must be None or a real number; got '20'"),
    (dict(learnable="yes"), TypeError, r"learnable must be True or False; got 'yes'"),
    (dict(param_dtype=jnp.int32), ValueError, r"param_dtype must be a floating dtype .*int32"),
    (dict(param_dtype=jnp.int32, learnable=True), ValueError, r"param_dtype must be a floating"),
    (dict(param_dtype=None), ValueError, r"param_dtype must be a floating dtype .*None"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_SOFTPLUS)
def test_softplus_bad_arguments_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=r"stable_layers\.equinox\.Softplus: " + match):
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
    with pytest.raises(ValueError, match=r"stable_layers\.equinox\.XSin: " + match):
        XSin(**kwargs)


def test_positional_and_keyword_only_signature():
    m = Softplus(2.0, 20.0)
    assert (m.beta, m.threshold) == (2.0, 20.0)
    with pytest.raises(TypeError):
        Softplus(2.0, 20.0, True)
    with pytest.raises(TypeError):
        XSin("input")
