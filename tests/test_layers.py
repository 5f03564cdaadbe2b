"""The layers of ``stable_layers.equinox``, ``.linen`` and ``.nnx``: one suite, three adapters.

Each framework is an adapter that builds a layer or a small network, calls it as a pure
function of its parameters, and reads those parameters. Every test runs on all three, except
where it is about one framework's own API (``eqx.nn.MLP``'s per-neuron copies, linen's compact
modules, nnx's ``dtype`` and ``nnx.Optimizer``).

References are independent of the kernels: the same networks in float64 with
``jnp.logaddexp`` and ``h·sin h``, analytic second derivatives, and central finite differences
on the stored parameter. The agreement tests hold every layer to its functional kernel bit for
bit (outputs, input gradients and the stored parameter's gradient, the functional side using
the documented ``beta = exp(log_beta).astype(x.dtype)``), for softplus's options and every
registry entry with a layer, in each of its policies and modes.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import registry
from flax import nnx
from helpers import (
    BF16,
    F32,
    F64,
    assert_tree_close,
    big_inputs,
    naive_overflows,
    slow_unless,
    softplus_ref,
)

import stable_layers as sl
from stable_layers import equinox as sl_eqx
from stable_layers import linen as sl_linen
from stable_layers import nnx as sl_nnx

KEY = jax.random.key(0)


# ----------------------------------------------------------------------------------------
# The adapters: build, call as a pure function of the parameters, read the parameters.
# ----------------------------------------------------------------------------------------


class Equinox:
    name, module = "equinox", sl_eqx

    def arrays(self, m, x):
        """Every array the layer holds (its whole state)."""
        return jax.tree.leaves(eqx.filter(m, eqx.is_array))

    def split(self, m, x):
        """({name: array} of the layer's own arrays, apply(params, x) -> y)."""
        params = {k: v for k, v in vars(m).items() if eqx.is_array(v)}

        def apply(p, x):
            if not p:
                return m(x)
            return eqx.tree_at(lambda m: [getattr(m, k) for k in p], m, list(p.values()))(x)

        return params, apply

    def network(self, sizes, acts, x, seed):
        """Linear layers of ``sizes`` with ``acts`` between them, batched over x's first axis:
        (params, apply(params, x), view(params) -> [per layer: {kernel, bias} or its arrays]).
        """
        keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
        layers = []
        for i, k in enumerate(keys):
            layers.append(eqx.nn.Linear(sizes[i], sizes[i + 1], dtype=F32, key=k))
            layers += acts[i : i + 1]
        params, static = eqx.partition(eqx.nn.Sequential(layers), eqx.is_array)

        def view(p):
            out = []
            for layer in p.layers:
                arrays = {k: v for k, v in vars(layer).items() if eqx.is_array(v)}
                if isinstance(layer, eqx.nn.Linear):
                    arrays = {"kernel": layer.weight.T, "bias": layer.bias}
                out.append(arrays)
            return out

        return params, lambda p, x: jax.vmap(eqx.combine(p, static))(x), view


class Linen:
    name, module = "linen", sl_linen

    def arrays(self, m, x):
        return jax.tree.leaves(m.init(KEY, x))

    def split(self, m, x):
        variables = m.init(KEY, x)
        assert set(variables) <= {"params"}, variables
        params = dict(variables.get("params", {}))
        return params, lambda p, x: m.apply({"params": p} if p else {}, x)

    def network(self, sizes, acts, x, seed):
        layers = []
        for i, size in enumerate(sizes[1:]):
            layers += [nn.Dense(size), *acts[i : i + 1]]
        model = nn.Sequential(layers)
        params = jax.jit(model.init)(jax.random.key(seed), x)["params"]

        def view(p):
            return [p.get(f"layers_{i}", {}) for i in range(len(layers))]

        return params, lambda p, x: model.apply({"params": p}, x), view


class Nnx:
    name, module = "nnx", sl_nnx

    def arrays(self, m, x):
        return jax.tree.leaves(nnx.state(m))

    def _pure(self, model):
        graphdef, state = nnx.split(model)
        assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))

        def apply(p, x):
            st = jax.tree.map(lambda a: a, state)  # a copy: the module is left as it is
            nnx.replace_by_pure_dict(st, p)
            return nnx.merge(graphdef, st)(x)

        return nnx.to_pure_dict(state), apply

    def split(self, m, x):
        return self._pure(m)

    def network(self, sizes, acts, x, seed):
        rngs = nnx.Rngs(seed)
        layers = []
        for i in range(len(sizes) - 1):
            layers += [nnx.Linear(sizes[i], sizes[i + 1], rngs=rngs), *acts[i : i + 1]]
        params, apply = self._pure(nnx.Sequential(*layers))

        def view(p):
            return [p["layers"].get(i, {}) for i in range(len(layers))]

        return params, apply, view


FRAMEWORKS = [pytest.param(fw, id=fw.name) for fw in (Equinox(), Linen(), Nnx())]

# The layers each framework makes from a function (no class written by hand).
FROM_FUNCTIONS = [
    ("XSin", sl.xsin),
    ("LogSigmoid", sl.log_sigmoid),
    ("SiLU", sl.silu),
    ("GELU", sl.gelu),
    ("Mish", sl.mish),
    ("ELU", sl.elu),
    ("CELU", sl.celu),
    ("SELU", sl.selu),
]


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
# State: no arrays unless learnable, then exactly one parameter.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_no_arrays_unless_learnable(fw):
    x = jnp.ones((2, 3), F32)
    layers = [
        fw.module.Softplus(),
        fw.module.Softplus(2.0, 30.0, residual="input", mode="jvp"),
        *(getattr(fw.module, name)() for name, _ in FROM_FUNCTIONS),
        fw.module.ELU(2.0, residual="input", mode="jvp"),
        fw.module.Snake(3, 0.0, learnable=False),
    ]
    for m in layers:
        assert fw.arrays(m, x) == [], m
    assert getattr(layers[0], "log_beta", None) is None


@pytest.mark.parametrize("param_dtype", [F32, F64, BF16])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_learnable_holds_one_param_in_param_dtype(fw, param_dtype):
    x = jnp.ones(3, F32)
    m = fw.module.Softplus(2.5, learnable=True, param_dtype=param_dtype)
    params, _ = fw.split(m, x)
    assert list(params) == ["log_beta"] and len(fw.arrays(m, x)) == 1
    leaf = params["log_beta"]
    assert leaf.shape == () and leaf.dtype == jnp.dtype(param_dtype)
    # β = exp(log_beta) starts at the beta argument, to within rounding of log β to param_dtype.
    eps = float(jnp.finfo(param_dtype).eps)
    np.testing.assert_allclose(float(jnp.exp(leaf.astype(F64))), 2.5, rtol=2 * 2.5 * eps)
    assert float(fw.split(fw.module.Softplus(learnable=True), x)[0]["log_beta"]) == 0.0


def test_nnx_parameter_is_an_nnx_param():
    assert isinstance(sl_nnx.Softplus(learnable=True).log_beta, nnx.Param)
    assert isinstance(sl_nnx.Snake(3).log_alpha, nnx.Param)


@pytest.mark.parametrize("param_dtype", [F32, F64, BF16])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_snake_holds_one_log_alpha_per_channel(fw, param_dtype):
    x = jnp.ones((2, 5), F32)
    m = fw.module.Snake(5, 0.3, param_dtype=param_dtype)
    params, _ = fw.split(m, x)
    assert list(params) == ["log_alpha"] and len(fw.arrays(m, x)) == 1
    leaf = params["log_alpha"]
    assert leaf.shape == (5,) and leaf.dtype == jnp.dtype(param_dtype)
    eps = float(jnp.finfo(param_dtype).eps)
    np.testing.assert_allclose(np.exp(np.asarray(leaf, np.float64)), 0.3, rtol=2 * eps)
    assert np.all(np.asarray(fw.split(fw.module.Snake(2), x[:, :2])[0]["log_alpha"]) == 0.0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_snake_needs_x_with_its_channels_along_channel_axis(fw):
    m = fw.module.Snake(3)
    params, apply = fw.split(m, jnp.ones((2, 3)))
    msg = rf"stable_layers\.{fw.name}\.Snake: x of shape \(2, 4\) has no axis channel_axis=-1 "
    with pytest.raises(ValueError, match=msg + "of size channels=3"):
        apply(params, jnp.ones((2, 4)))
    _, apply = fw.split(fw.module.Snake(3, channel_axis=2, learnable=False), jnp.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="channel_axis=2 of size channels=3"):
        apply({}, jnp.ones((2, 3)))


def test_equinox_snake_after_an_unbatched_conv1d():
    """channel_axis=0: eqx.nn.Conv1d's unbatched output is (channels, length)."""
    k0, k1 = jax.random.split(jax.random.key(8))
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv1d(2, 4, 3, padding=1, dtype=F32, key=k0),
            sl_eqx.Snake(4, 0.8, channel_axis=0),
            eqx.nn.Conv1d(4, 1, 3, padding=1, dtype=F32, key=k1),
        ]
    )
    lo = jnp.log(0.8) + jnp.linspace(-0.5, 0.5, 4, dtype=F32)
    model = eqx.tree_at(lambda m: m.layers[1].log_alpha, model, lo)
    params, static = eqx.partition(model, eqx.is_array)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(5, 2, 16)), F32)

    def ref(p, x):  # the convolutions as Equinox computes them, snake by the textbook
        conv0, act, conv1 = eqx.combine(p, static).layers

        def one(x):
            h = conv0(x)
            a = jnp.exp(act.log_alpha)[:, None]
            return conv1(h + jnp.sin(a * h) ** 2 / a)

        return jax.vmap(one)(x)

    y, grads = outputs_and_grads(lambda p, x: jax.vmap(eqx.combine(p, static))(x), params, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(params), x.astype(F64))
    assert y.shape == (5, 1, 16)
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)
    assert grads.layers[1].log_alpha.shape == (4,)


def test_learnable_layers_start_at_the_same_parameter():
    x = jnp.ones(2)
    starts = [
        fw.split(fw.module.Softplus(3.0, learnable=True, param_dtype=F64), x)[0]["log_beta"]
        for fw in (Equinox(), Linen(), Nnx())
    ]
    assert all(s.dtype == F64 and float(s) == np.log(3.0) for s in starts), starts


# ----------------------------------------------------------------------------------------
# Drop-in: each framework's Sequential, under jit and grad, against float64 networks.
# ----------------------------------------------------------------------------------------


def _softplus_ref_layer(beta):
    def ref(h, p):
        return softplus_ref(h, jnp.exp(p["log_beta"]) if "log_beta" in p else beta)

    return ref


def _snake_ref_layer(alpha):
    """The textbook x + sin²(αx)/α (finite here: α is not near 0), α per channel, last axis."""

    def ref(h, p):
        a = jnp.exp(p["log_alpha"]) if "log_alpha" in p else alpha
        return h + jnp.sin(a * h) ** 2 / a

    return ref


# name: (layer constructors, their float64 references (h, own params) -> y, sizes, input)
NETWORKS = {
    "softplus-learnable-vjp": (
        [lambda m: m.Softplus(mode="vjp"), lambda m: m.Softplus(1.5, learnable=True)],
        [_softplus_ref_layer(1.0), _softplus_ref_layer(1.5)],
        (2, 16, 16, 1),
        lambda: big_inputs(),
    ),
    "softplus-fixed-jvp": (
        [lambda m: m.Softplus(mode="jvp"), lambda m: m.Softplus(1.5, mode="jvp")],
        [_softplus_ref_layer(1.0), _softplus_ref_layer(1.5)],
        (2, 16, 16, 1),
        lambda: big_inputs(),
    ),
    "snake-learnable": (
        [lambda m: m.Snake(16, 0.7), lambda m: m.Snake(16, 1.3, mode="jvp")],
        [_snake_ref_layer(0.7), _snake_ref_layer(1.3)],
        (3, 16, 16, 1),
        lambda: jnp.asarray(np.random.default_rng(6).normal(size=(16, 3)), F32),
    ),
    "xsin": (
        [lambda m: m.XSin(), lambda m: m.XSin(mode="jvp", residual="input")],
        [lambda h, p: h * jnp.sin(h)] * 2,
        (3, 8, 8, 1),
        lambda: jnp.asarray(np.random.default_rng(5).normal(size=(16, 3)), F32),
    ),
}


@pytest.mark.parametrize(
    "net", slow_unless(list(NETWORKS), ("softplus-learnable-vjp", "snake-learnable"))
)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sequential_drop_in_jit_and_grad(fw, net):
    makers, refs, sizes, inputs = NETWORKS[net]
    x = inputs()
    params, apply, view = fw.network(sizes, [make(fw.module) for make in makers], x, seed=1)
    learnable = "learnable" in net
    assert bool(view(params)[3]) == learnable
    if net.startswith("softplus"):  # where the textbook softplus overflows
        first = jax.tree.map(np.asarray, view(params)[0])
        assert naive_overflows(np.asarray(x) @ first["kernel"] + first["bias"])

    def ref(p, x):
        layers = view(p)
        h = x
        for i, lin in enumerate(layers[0::2]):
            h = h @ lin["kernel"] + lin["bias"]
            if 2 * i + 1 < len(layers):
                h = refs[i](h, layers[2 * i + 1])
        return h

    y, grads = outputs_and_grads(apply, params, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(params), x.astype(F64))
    assert y.dtype == F32
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert_tree_close(grads, grads_ref, rtol=1e-4)
    if learnable:
        (g,) = view(grads)[3].values()
        assert g.dtype == F32 and np.all(np.asarray(g) != 0)


def test_equinox_mlp_activation_is_per_neuron_and_trains():
    depth, width = 2, 8
    mlp = eqx.nn.MLP(
        2, 1, width, depth, activation=sl_eqx.Softplus(learnable=True), dtype=F32, key=KEY
    )
    # eqx.nn.MLP copies the activation per hidden neuron: one log β per neuron.
    assert mlp.activation.log_beta.shape == (depth, width)
    # Give every neuron a different β so that the per-neuron indexing is exercised.
    lb = jnp.linspace(-0.5, 0.5, depth * width, dtype=F32).reshape(depth, width)
    mlp = eqx.tree_at(lambda m: m.activation.log_beta, mlp, lb)
    x = big_inputs(seed=3)
    assert naive_overflows(np.asarray(x) @ np.asarray(mlp.layers[0].weight).T)
    params, static = eqx.partition(mlp, eqx.is_array)

    def ref(m, x):
        h = x
        for i, lin in enumerate(m.layers[:-1]):
            h = softplus_ref(h @ lin.weight.T + lin.bias, jnp.exp(m.activation.log_beta[i]))
        return h @ m.layers[-1].weight.T + m.layers[-1].bias

    # Equinox's own transformations on the module, against jax's on the float64 reference.
    @eqx.filter_jit
    def run(model, x):
        def loss(m):
            y = jax.vmap(m)(x)
            return jnp.mean(y**2), y

        (_, y), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        return y, grads

    y, grads = run(mlp, x)
    y_ref, grads_ref = outputs_and_grads(ref, to_f64(params), x.astype(F64))
    assert_tree_close(y, y_ref, rtol=1e-5)
    assert grads.activation.log_beta.shape == (depth, width)
    assert_tree_close(grads, grads_ref, rtol=1e-4)


def test_linen_inside_compact_module():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4)(x)
            h = sl_linen.Softplus(2.0, learnable=True)(h)
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
# Learnable β: finite differences on the stored parameter, steps that keep it positive.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
@pytest.mark.parametrize("residual", ["output", "input"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_learnable_beta_grad_matches_central_difference(fw, residual, mode):
    x = jnp.asarray(np.random.default_rng(0).normal(size=64) * 20, F64)
    w = jnp.asarray(np.random.default_rng(1).normal(size=64), F64)
    m = fw.module.Softplus(0.7, learnable=True, residual=residual, mode=mode, param_dtype=F64)
    params, apply = fw.split(m, x)

    @jax.jit
    def loss(p):
        return jnp.sum(w * apply(p, x))

    g = jax.jit(jax.grad(loss))(params)["log_beta"]
    h, lb = 1e-6, params["log_beta"]
    fd = (loss({"log_beta": lb + h}) - loss({"log_beta": lb - h})) / (2 * h)
    np.testing.assert_allclose(float(g), float(fd), rtol=1e-7)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_learnable_beta_stays_positive_after_large_steps(fw):
    x = jnp.linspace(-3, 3, 7, dtype=F32)
    params, apply = fw.split(fw.module.Softplus(learnable=True), x)
    g = jax.jit(jax.grad(lambda p: jnp.sum(apply(p, x))))(params)
    # Steps of ±10 times the gradient move log β by about ±26: a step that size on β itself
    # would make it negative; β = exp(log β) stays positive (and, for |log β| < 87, finite
    # and normal in float32).
    for lr in (10.0, -10.0):
        p2 = jax.tree.map(lambda p, g: p - lr * g, params, g)
        assert abs(float(p2["log_beta"])) > 20
        beta = float(jnp.exp(p2["log_beta"].astype(F64)))
        assert beta > 0
        y = jax.jit(apply)(p2, x)
        assert bool(jnp.all(jnp.isfinite(y)))
        np.testing.assert_allclose(y, softplus_ref(x.astype(F64), beta), rtol=1e-5, atol=1e-30)


def test_nnx_optimizer_step_updates_beta_and_keeps_it_positive():
    m = sl_nnx.Softplus(learnable=True)
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
    np.testing.assert_allclose(m(x), softplus_ref(x.astype(F64), beta), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# dtypes and forward mode.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bfloat16_in_bfloat16_out(fw, learnable):
    x = jnp.array([-500.0, -3.0, 0.0, 0.5, 3.0, 500.0], BF16)
    params, apply = fw.split(fw.module.Softplus(2.0, learnable=learnable), x)
    y = jax.jit(apply)(params, x)
    assert y.dtype == BF16
    beta = float(jnp.exp(params["log_beta"]).astype(BF16)) if learnable else 2.0
    np.testing.assert_allclose(
        np.asarray(y, np.float64), softplus_ref(np.asarray(x, np.float64), beta), rtol=2**-8
    )
    gx = jax.jit(jax.grad(lambda x: jnp.sum(apply(params, x))))(x)
    assert gx.dtype == BF16
    if learnable:
        g = jax.jit(jax.grad(lambda p: jnp.sum(apply(p, x).astype(F32))))(params)["log_beta"]
        assert g.dtype == F32 and bool(jnp.isfinite(g))
    for cls in ("XSin", "LogSigmoid"):
        _, apply = fw.split(getattr(fw.module, cls)(), x)
        assert apply({}, x).dtype == BF16


@pytest.mark.parametrize("learnable", [False, True])
def test_nnx_dtype_argument_sets_the_computation_dtype(learnable):
    x = jnp.linspace(-200, 200, 9, dtype=F32)
    m = sl_nnx.Softplus(2.0, learnable=learnable, dtype=BF16)
    y = m(x)
    assert y.dtype == BF16
    # Same as casting the input by hand and leaving dtype unset.
    np.testing.assert_array_equal(y, sl_nnx.Softplus(2.0, learnable=learnable)(x.astype(BF16)))
    assert sl_nnx.Softplus(dtype=F64)(x).dtype == F64


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_jvp_mode_supports_forward_mode_and_hessian(fw):
    x = jnp.array([-40.0, -1.0, 0.0, 2.0, 40.0], F64)
    params, apply = fw.split(fw.module.Softplus(2.0, mode="jvp"), x)
    # d²/dx² softplus_β(x) = β sigmoid(βx) sigmoid(-βx) = β e^-|βx| / (1 + e^-|βx|)², float64.
    e = np.exp(-np.abs(2.0 * np.asarray(x)))
    hess = jax.jit(jax.hessian(lambda x: jnp.sum(apply(params, x))))(x)
    np.testing.assert_allclose(np.diag(hess), 2.0 * e / (1 + e) ** 2, rtol=1e-12)
    _, tangent = jax.jit(lambda x: jax.jvp(lambda x: apply(params, x), (x,), (jnp.ones_like(x),)))(
        x
    )
    np.testing.assert_allclose(tangent, np.where(np.asarray(x) >= 0, 1, e) / (1 + e), rtol=1e-14)

    # Second derivative in the stored log β, against a second central difference of the
    # float64 reference (truncation ~h², rounding ~1e-16 * 100 / h²: both < 1e-6).
    m = fw.module.Softplus(2.0, learnable=True, mode="jvp", param_dtype=F64)
    params, apply = fw.split(m, x)
    hess_b = jax.jit(jax.hessian(lambda lb: jnp.sum(apply({"log_beta": lb}, x))))(
        params["log_beta"]
    )
    lb, h = float(params["log_beta"]), 1e-4
    f = [float(jnp.sum(softplus_ref(x, np.exp(lb + k * h)))) for k in (-1, 0, 1)]
    np.testing.assert_allclose(float(hess_b), (f[0] - 2 * f[1] + f[2]) / h**2, rtol=1e-5)

    _, apply = fw.split(fw.module.XSin(mode="jvp"), x)
    np.testing.assert_allclose(
        np.diag(jax.jit(jax.hessian(lambda x: jnp.sum(apply({}, x))))(x)),
        2 * np.cos(np.asarray(x)) - np.asarray(x) * np.sin(np.asarray(x)),
        rtol=1e-12,
        atol=1e-12,
    )


# ----------------------------------------------------------------------------------------
# Bad arguments fail at construction (linen: before init), naming the argument, the value
# and the choices; positional and keyword-only arguments as documented.
# ----------------------------------------------------------------------------------------

BETA = "beta must be a positive finite number"
THRESHOLD = "threshold must be None or a real number"
PARAM_DTYPE = "param_dtype must be a floating dtype"
MODE = "mode must be one of 'vjp', 'jvp'"
OUTPUT_INPUT = "residual must be one of 'output', 'input'"
XSIN_RESIDUALS = "residual must be one of 'derivative', 'input_and_sin', 'input'"
BITS = "bits must be one of None, 1, 2, 4, 8"
ALPHA = "alpha must be a positive finite number"
CHANNELS = "channels must be a positive int"
CODES = "keeps the slope as codes, so residual must be left out or 'derivative'"
# (layer, kwargs, exception, message after "stable_layers.<framework>.<layer>: ")
BAD_ARGUMENTS = [
    ("Softplus", dict(residual="outptu"), ValueError, f"{OUTPUT_INPUT}; got 'outptu'"),
    ("Softplus", dict(mode="rev"), ValueError, f"{MODE}; got 'rev'"),
    ("Softplus", dict(beta=0.0), ValueError, rf"{BETA}; got 0\.0"),
    ("Softplus", dict(beta=-1.0), ValueError, rf"{BETA}; got -1\.0"),
    ("Softplus", dict(beta=float("nan")), ValueError, f"{BETA}; got nan"),
    ("Softplus", dict(beta=float("inf"), learnable=True), ValueError, f"{BETA}; got inf"),
    ("Softplus", dict(beta="2"), TypeError, f"{BETA} .*got '2'"),
    ("Softplus", dict(beta=jnp.array(2.0)), TypeError, BETA),
    ("Softplus", dict(threshold=float("nan")), ValueError, f"{THRESHOLD}; got nan"),
    ("Softplus", dict(threshold="20"), ValueError, f"{THRESHOLD}; got '20'"),
    ("Softplus", dict(learnable="yes"), TypeError, "learnable must be True or False; got 'yes'"),
    ("Softplus", dict(learnable=1), TypeError, "learnable must be True or False; got 1"),
    ("Softplus", dict(param_dtype=jnp.int32), ValueError, f"{PARAM_DTYPE} .*int32"),
    ("Softplus", dict(param_dtype=jnp.int32, learnable=True), ValueError, PARAM_DTYPE),
    ("Softplus", dict(param_dtype=None), ValueError, f"{PARAM_DTYPE} .*None"),
    ("Softplus", dict(param_dtype="complex64"), ValueError, PARAM_DTYPE),
    ("XSin", dict(residual="output"), ValueError, XSIN_RESIDUALS),
    ("XSin", dict(mode="fwd"), ValueError, f"{MODE}; got 'fwd'"),
    ("LogSigmoid", dict(residual="derivative"), ValueError, OUTPUT_INPUT),
    ("LogSigmoid", dict(mode="fwd"), ValueError, f"{MODE}; got 'fwd'"),
    *[("XSin", dict(bits=b), ValueError, f"{BITS}; got {b!r}") for b in (0, 3, 16, True, 8.0)],
    ("XSin", dict(bits=False), ValueError, f"{BITS}; got False"),
    ("XSin", dict(bits=4, residual="input"), ValueError, f"bits=4 {CODES}; got residual='input'"),
    ("XSin", dict(bits=1, residual="input_and_sin"), ValueError, f"bits=1 {CODES}"),
    ("XSin", dict(bits=8, mode="jvp"), ValueError, r"bits=8 is for reverse mode .*got mode='jvp'"),
    ("SiLU", dict(bits=3), ValueError, f"{BITS}; got 3"),
    ("SiLU", dict(residual="output"), ValueError, "residual must be one of 'input', 'derivative'"),
    ("GELU", dict(approximate="yes"), TypeError, "approximate must be True or False; got 'yes'"),
    ("GELU", dict(bits=2, residual="input"), ValueError, f"bits=2 {CODES}; got residual='input'"),
    ("Mish", dict(bits=4, mode="jvp"), ValueError, r"bits=4 is for reverse mode .*got mode='jvp'"),
    ("Mish", dict(mode="rev"), ValueError, f"{MODE}; got 'rev'"),
    *[("ELU", dict(alpha=a), ValueError, f"{ALPHA}; got {a!r}") for a in (0.0, -1.0, float("nan"))],
    ("ELU", dict(alpha=float("inf")), ValueError, f"{ALPHA}; got inf"),
    ("ELU", dict(alpha="1"), TypeError, "alpha must be a positive finite Python number"),
    ("ELU", dict(alpha=jnp.array(1.0)), TypeError, "alpha must be a positive finite Python number"),
    ("CELU", dict(alpha=-2.0), ValueError, f"{ALPHA}; got -2.0"),
    ("CELU", dict(residual="derivative"), ValueError, f"{OUTPUT_INPUT}; got 'derivative'"),
    ("SELU", dict(mode="fwd"), ValueError, f"{MODE}; got 'fwd'"),
    *[("Snake", dict(channels=c), TypeError, f"{CHANNELS}; got {c}") for c in (2.0, True, None)],
    *[("Snake", dict(channels=c), ValueError, f"{CHANNELS}; got {c}") for c in (0, -3)],
    *[("Snake", dict(channels=2, **kw), exc, match) for kw, exc, match in [
        (dict(alpha=0.0), ValueError, "alpha must be a positive finite number when learnable=True"),
        (dict(alpha=-1.0), ValueError, "alpha must be a positive .*; got -1.0"),
        (dict(alpha=float("inf")), ValueError, "alpha must be a positive .*; got inf"),
        (dict(alpha=float("nan"), learnable=False), ValueError, "alpha must be finite; got nan"),
        (dict(alpha=jnp.ones(2)), TypeError, "alpha must be a finite Python number"),
        (dict(learnable="yes"), TypeError, "learnable must be True or False; got 'yes'"),
        (dict(channel_axis=1.0), TypeError, "channel_axis must be an int .*; got 1.0"),
        (dict(residual="output"), ValueError, "residual must be one of 'input'; got 'output'"),
        (dict(mode="rev"), ValueError, f"{MODE}; got 'rev'"),
        (dict(param_dtype=jnp.int32), ValueError, f"{PARAM_DTYPE} .*int32"),
    ]],
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs, exc, match", BAD_ARGUMENTS)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bad_arguments_fail_at_construction(fw, cls, kwargs, exc, match):
    with pytest.raises(exc, match=rf"stable_layers\.{fw.name}\.{cls}: " + match):
        getattr(fw.module, cls)(**kwargs)


def test_nnx_bad_dtype_fails_at_construction():
    with pytest.raises(ValueError, match=r"nnx\.Softplus: dtype must be a floating dtype .*int8"):
        sl_nnx.Softplus(dtype=jnp.int8)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_layers_without_parameters_take_their_functions_options(fw):
    """A factory-made layer's constructor is its function's signature less x: the same
    names, kinds and defaults; the options are kept on the layer as given."""
    for name, fn in FROM_FUNCTIONS:
        cls = getattr(fw.module, name)
        expected = list(inspect.signature(fn).parameters.values())[1:]
        got = [
            p
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", "parent", "name")  # linen's own fields
        ]
        assert [(p.name, p.kind, p.default) for p in got] == [
            (p.name, p.kind, p.default) for p in expected
        ], name
        assert f":func:`stable_layers.{fn.__name__}`" in cls.__doc__
        assert cls.__module__ == fw.module.__name__ and cls.__qualname__ == name
    m = fw.module.XSin(bits=4, residual="derivative")
    assert (m.bits, m.residual, m.mode) == (4, "derivative", "vjp")
    with pytest.raises(TypeError):
        fw.module.LogSigmoid(bits=4)  # log_sigmoid keeps its output: it has no codes
    with pytest.raises(TypeError):
        fw.module.SELU(1.0)  # selu's α is a constant, not an option
    x = jnp.linspace(-3.0, 3.0, 13, dtype=F32)
    m = fw.module.ELU(0.5)  # positional, as in elu(x, 0.5)
    assert m.alpha == 0.5
    np.testing.assert_array_equal(fw.split(m, x)[1]({}, x), sl.elu(x, 0.5))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_positional_and_keyword_only_arguments(fw):
    m = fw.module.Softplus(2.0, 20.0)
    assert (m.beta, m.threshold) == (2.0, 20.0)
    with pytest.raises(TypeError):
        fw.module.Softplus(2.0, 20.0, True)
    with pytest.raises(TypeError):
        fw.module.XSin("input")
    with pytest.raises(TypeError):
        fw.module.LogSigmoid("input")


# ----------------------------------------------------------------------------------------
# Agreement: every layer is its functional kernel, bit for bit, in every framework.
# ----------------------------------------------------------------------------------------


def impls(cls, args, kwargs, fn, x):
    """The kernel and its three layers, each as (params, x) -> y, params {} or {name: array}."""
    out = {"functional": fn}
    for fw in (Equinox(), Linen(), Nnx()):
        _, out[fw.name] = fw.split(getattr(fw.module, cls)(*args, **kwargs), x)
    return out


def softplus_impls(beta, threshold, learnable, residual, mode, x, param_dtype=F32):
    def functional(p, x):
        # β in the dtype the kernel computes x in (integers promote as in jax.nn.softplus).
        x_float = jax.eval_shape(jax.nn.softplus, x).dtype
        b = jnp.exp(p["log_beta"]).astype(x_float) if p else beta
        return sl.softplus(x, beta=b, threshold=threshold, residual=residual, mode=mode)

    kw = dict(learnable=learnable, residual=residual, mode=mode, param_dtype=param_dtype)
    return impls("Softplus", (beta, threshold), kw, functional, x)


def all_outputs_and_grads(impls, x, params, w):
    """y and the gradients of sum(w * y) with respect to x and the parameters, of every
    implementation, in one jitted call (one compile, not four)."""

    @jax.jit
    def run(x, params):
        out = {}
        for k, f in impls.items():
            y, vjp = jax.vjp(f, params, x)
            gp, gx = vjp(w)
            out[k] = (y, gx, next(iter(gp.values()), None))  # a layer has one parameter
        return out

    return run(x, params)


def assert_all_identical(results):
    ref = results["functional"]
    for name, res in results.items():
        for what, a, r in zip(("output", "x-gradient", "parameter-gradient"), res, ref):
            if r is None:
                assert a is None
                continue
            assert a.dtype == r.dtype and a.shape == r.shape, (name, what)
            assert np.all(np.isfinite(np.asarray(a, np.float64))), (name, what)
            np.testing.assert_array_equal(
                np.asarray(a, np.float64),
                np.asarray(r, np.float64),
                err_msg=f"{name} vs functional: {what}",
            )


def inputs(dtype, n=48):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(size=n - 8) * 30, [0.0, -1e4, 1e4, 1e-3, -60, 60, 95, -95]])
    w = rng.normal(size=n)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


# Every learnable x mode x residual combination, with the threshold on in half of them and
# a non-unit β throughout, so each option reaches the kernel through every framework.
SOFTPLUS_CASES = [
    (beta, threshold, learnable, residual, mode)
    for learnable in (False, True)
    for mode in ("vjp", "jvp")
    for residual, threshold in (("output", None), ("input", 12.0))
    for beta in ((0.5,) if not learnable else (2.5,))
]
SOFTPLUS_CASES.append((1.0, 12.0, False, "output", "vjp"))  # β = 1 with a threshold too


@pytest.mark.parametrize("beta, threshold, learnable, residual, mode", SOFTPLUS_CASES)
def test_softplus_frameworks_and_functional_agree(beta, threshold, learnable, residual, mode):
    x, w = inputs(F32)
    params = {"log_beta": jnp.asarray(np.log(beta) + 0.1, F32)} if learnable else {}
    funcs = softplus_impls(beta, threshold, learnable, residual, mode, x)
    assert_all_identical(all_outputs_and_grads(funcs, x, params, w))


@pytest.mark.parametrize("learnable", [False, True])
def test_softplus_agree_in_bfloat16_with_float32_parameter(learnable):
    x, w = inputs(BF16)
    params = {"log_beta": jnp.asarray(0.3, F32)} if learnable else {}
    results = all_outputs_and_grads(
        softplus_impls(1.5, None, learnable, "output", "vjp", x), x, params, w
    )
    y, gx, glb = results["functional"]
    assert y.dtype == BF16 and gx.dtype == BF16
    assert glb is None or glb.dtype == F32
    assert_all_identical(results)


def snake_impls(alpha, learnable, channel_axis, mode, x):
    """snake and its three layers, as (params, x) -> y; a learnable α runs along
    ``channel_axis`` and meets x's dtype before the kernel, as documented."""
    channels = x.shape[channel_axis]

    def functional(p, x):
        if not p:
            return sl.snake(x, alpha, mode=mode)
        shape = [1] * x.ndim
        shape[channel_axis] = channels
        return sl.snake(x, jnp.exp(p["log_alpha"]).astype(x.dtype).reshape(shape), mode=mode)

    kw = dict(learnable=learnable, channel_axis=channel_axis, mode=mode)
    return impls("Snake", (channels, alpha), kw, functional, x)


SNAKE_CASES = [
    (0.7, True, -1, "vjp"),
    (0.7, True, 0, "jvp"),
    (0.0, False, -1, "vjp"),  # α = 0 is the identity
    (-1.5, False, 0, "jvp"),  # a fixed α may be negative
]


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("alpha, learnable, channel_axis, mode", SNAKE_CASES)
def test_snake_frameworks_and_functional_agree(alpha, learnable, channel_axis, mode, dtype):
    x, w = (a.reshape(6, 8) for a in inputs(dtype))
    channels = x.shape[channel_axis]
    # A trained-looking α: a different one per channel.
    lo = np.log(alpha) + np.linspace(-0.5, 0.5, channels) if learnable else None
    params = {"log_alpha": jnp.asarray(lo, F32)} if learnable else {}
    results = all_outputs_and_grads(
        snake_impls(alpha, learnable, channel_axis, mode, x), x, params, w
    )
    y, gx, ga = results["functional"]
    assert y.dtype == dtype and gx.dtype == dtype
    assert ga is None if not learnable else (ga.dtype == F32 and ga.shape == (channels,))
    assert_all_identical(results)


def layer_impls(entry, x, **options):
    """The entry's function and its three layers, with the entry's own fixed options (e.g.
    ``functools.partial(sl.celu, alpha=2.0)``'s alpha) passed to the layers too."""
    kw = {**getattr(entry.fn, "keywords", {}), **options}
    if entry.layer == "Snake":  # the entry's fixed α, the same for every channel
        kw.update(channels=x.shape[-1], learnable=False)
    return impls(entry.layer, (), kw, lambda p, x: entry.fn(x, **options), x)


# Every policy in both modes; the "jvp" half runs with -m slow (the layers pass mode through
# untouched, and softplus's and snake's agreement and the Hessian tests run "jvp" by default).
LAYER_CASES = [
    c if c.values[2] == "vjp" else pytest.param(*c.values, id=c.id, marks=pytest.mark.slow)
    for c in registry.cases()
    if c.values[0].layer is not None
]
LAYER_ENTRIES = [pytest.param(e, id=e.name) for e in registry.ENTRIES if e.layer is not None]


@pytest.mark.parametrize("entry,residual,mode", LAYER_CASES)
def test_layers_and_functional_agree(entry, residual, mode):
    x, w = inputs(F32)
    funcs = layer_impls(entry, x, residual=residual, mode=mode)
    assert_all_identical(all_outputs_and_grads(funcs, x, {}, w))


@pytest.mark.parametrize("entry", LAYER_ENTRIES)
def test_layers_agree_in_bfloat16(entry):
    x, w = inputs(BF16)
    results = all_outputs_and_grads(layer_impls(entry, x), x, {}, w)
    for name, (y, gx, _) in results.items():
        assert y.dtype == BF16 and gx.dtype == BF16, name
    assert_all_identical(results)


# XSin with 4 bits and SiLU run by default; the other widths and GELU, Mish with -m slow (the
# layers pass bits through untouched: what differs between these is the function).
CODES_CASES = [
    pytest.param(cls, fn, bits, marks=() if (cls, bits) in fast else pytest.mark.slow)
    for fast in [{("XSin", 4), ("SiLU", 4)}]
    for cls, fn, bits in [("XSin", sl.xsin, b) for b in (1, 2, 4, 8)]
    + [(name, fn, 4) for name, fn in FROM_FUNCTIONS if name in ("SiLU", "GELU", "Mish")]
]


@pytest.mark.parametrize("cls, fn, bits", CODES_CASES, ids=lambda v: getattr(v, "__name__", v))
def test_layers_with_bits_agree_with_the_function(cls, fn, bits):
    x, w = inputs(F32)
    for residual in ({}, {"residual": "derivative"}):
        funcs = impls(cls, (), dict(bits=bits, **residual), lambda p, x: fn(x, bits=bits), x)
        assert_all_identical(all_outputs_and_grads(funcs, x, {}, w))
    # The codes are what the backward pass keeps: the gradient is not the exact one.
    exact = jax.grad(lambda x: jnp.sum(w * fn(x)))(x)
    coded = jax.grad(lambda x: jnp.sum(w * fn(x, bits=bits)))(x)
    assert not np.array_equal(exact, coded)


def test_jvp_mode_hessians_agree_across_frameworks():
    x = jnp.linspace(-30, 30, 7, dtype=F64)
    funcs = softplus_impls(2.0, None, True, "output", "jvp", x, param_dtype=F64)
    lb = jnp.asarray(0.2, F64)
    hessians = {
        k: jax.jit(jax.hessian(lambda xb: jnp.sum(f({"log_beta": xb[-1]}, xb[:-1]))))(
            jnp.append(x, lb)
        )
        for k, f in funcs.items()
    }
    for name, h in hessians.items():
        assert np.all(np.isfinite(h)), name
        np.testing.assert_array_equal(h, hessians["functional"], err_msg=name)


@pytest.mark.parametrize("learnable", [False, True])
def test_integer_inputs_promote_like_the_kernel(learnable):
    x = jnp.arange(-3, 4, dtype=jnp.int32)
    funcs = softplus_impls(1.0, None, learnable, "output", "vjp", x)
    params = {"log_beta": jnp.asarray(0.0, F32)} if learnable else {}
    expected = sl.softplus(x)  # integers promote as in jax.nn.softplus; β = exp(0) = 1
    for name, f in funcs.items():
        y = jax.jit(f)(params, x)
        assert y.dtype == expected.dtype, name
        np.testing.assert_array_equal(y, expected, err_msg=name)


# ----------------------------------------------------------------------------------------
# Imports: the frameworks are optional extras.
# ----------------------------------------------------------------------------------------

_IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys
    import stable_layers
    out = {"core_imports": sorted(m for m in ("equinox", "flax") if m in sys.modules)}
    sys.modules["equinox"] = None  # as if Equinox were not installed
    sys.modules["flax"] = None
    for sub in ("equinox", "linen", "nnx"):
        try:
            __import__("stable_layers." + sub)
            out[sub] = None
        except ImportError as err:
            out[sub] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def import_probe():
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_stable_layers_imports_no_framework(import_probe):
    assert import_probe["core_imports"] == []


@pytest.mark.parametrize(
    "sub, extra",
    [
        ("equinox", "stable-layers[equinox]"),
        ("linen", "stable-layers[flax]"),
        ("nnx", "stable-layers[flax]"),
    ],
)
def test_missing_framework_names_the_extra(import_probe, sub, extra):
    msg = import_probe[sub]
    assert msg is not None, f"stable_layers.{sub} imported without its framework"
    assert f"stable_layers.{sub} needs" in msg
    assert f'pip install "{extra}"' in msg
