"""stable_layers.custom_activation: user-built activations, their residuals, modes and dtypes.

The activations here are written by the test (tanh, sigmoid, an ELU, and deliberately wrong
ones) and checked against analytic derivatives and ``jax.test_util.check_grads``; nothing is
compared with the library's own output except where the claim is that two paths agree.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mlp_temp_bytes, np_dtype, residual_arrays, sweep, ulp_error
from jax.ad_checkpoint import checkpoint_policies
from jax.test_util import check_grads

import stable_layers as sl

try:  # public in newer JAX; the internal name has been stable since 0.4
    from jax.ad_checkpoint import saved_residuals
except ImportError:  # pragma: no cover - depends on the JAX version
    from jax._src.ad_checkpoint import saved_residuals

MODES = ("vjp", "jvp")


def make_tanh(name="test.tanh"):
    return sl.custom_activation(
        jnp.tanh,
        # 1/cosh², not 1 - tanh², which cancels for large |x| (0 once tanh rounds to 1).
        derivative=lambda x: 1 / jnp.cosh(x) ** 2,
        derivative_from_output=lambda y: (1 - y) * (1 + y),
        name=name,
    )


def make_sigmoid(name="test.sigmoid"):
    return sl.custom_activation(
        jax.nn.sigmoid,
        derivative=lambda x: jax.nn.sigmoid(x) * jax.nn.sigmoid(-x),
        derivative_from_output=lambda y: y * (1 - y),
        name=name,
    )


def make_elu(name="test.elu"):
    # ELU (α = 1): its slope is 1 for x > 0 and e^x = y + 1 for x <= 0.
    return sl.custom_activation(
        lambda x: jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0))),
        derivative=lambda x: jnp.where(x > 0, 1.0, jnp.exp(jnp.minimum(x, 0))),
        derivative_from_output=lambda y: jnp.where(y > 0, 1.0, y + 1),
        name=name,
    )


def make_sin_without_output_rule(name="test.sin"):
    return sl.custom_activation(jnp.sin, derivative=jnp.cos, name=name)


def grad_of(f):
    """Elementwise derivative of an elementwise f, through reverse mode."""
    return lambda x: jax.grad(lambda x: jnp.sum(f(x)))(x)


def first_and_second(f):
    """``x -> (f'(x), f''(x))`` elementwise through reverse mode, compiled once."""
    return jax.jit(lambda x: (grad_of(f)(x), grad_of(grad_of(f))(x)))


def kept_arrays(f, x):
    """What jax.vjp keeps for the backward pass, of x's shape."""
    _, vjp = jax.vjp(f, x)
    return [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", None) == x.shape]


X64 = jnp.linspace(-3.0, 3.0, 24, dtype=jnp.float64).reshape(4, 6)

# ------------------------------------------------------------------------------ residuals


def test_residual_choices_and_defaults():
    tanh, sin = make_tanh(), make_sin_without_output_rule()
    assert tanh.residuals == ("output", "input", "derivative")
    assert sin.residuals == ("input", "derivative")
    assert tanh.name == "test.tanh" and sin.name == "test.sin"
    # The default is the first: the output when derivative_from_output is given...
    y, vjp = jax.vjp(tanh, X64)
    (kept,) = [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", None) == (4, 6)]
    np.testing.assert_array_equal(kept, y)
    # ...else the input (measured: less step memory than keeping the slope; see the docstring).
    (kept,) = kept_arrays(sin, X64)
    np.testing.assert_array_equal(kept, X64)


@pytest.mark.parametrize("mode", MODES)
def test_each_residual_keeps_exactly_what_it_says(mode):
    tanh = make_tanh()
    for residual in tanh.residuals:
        f = functools.partial(tanh, residual=residual, mode=mode)
        y, vjp = jax.vjp(f, X64)
        kept = [a for a in jax.tree_util.tree_leaves(vjp) if getattr(a, "shape", None) == (4, 6)]
        assert len(kept) == 1, residual
        assert len(residual_arrays(lambda x: jnp.sum(f(x)), X64)) == 1, residual
        if residual == "input":
            np.testing.assert_array_equal(kept[0], X64)
        elif residual == "output":
            np.testing.assert_array_equal(kept[0], y)
        else:  # the slope, against NumPy
            np.testing.assert_allclose(kept[0], 1 / np.cosh(np.asarray(X64)) ** 2, rtol=1e-14)


def test_invalid_residual_and_mode_name_the_choices_of_this_activation():
    x = jnp.ones(3, jnp.float32)
    with pytest.raises(
        ValueError, match=r"test\.sin: residual must be one of 'input', 'derivative'; got 'output'"
    ):
        make_sin_without_output_rule()(x, residual="output")  # no derivative_from_output
    with pytest.raises(
        ValueError,
        match=r"test\.tanh: residual must be one of 'output', 'input', 'derivative'; got 'grad'",
    ):
        make_tanh()(x, residual="grad")
    with pytest.raises(ValueError, match=r"test\.tanh: residual must be .*; got 1"):
        make_tanh()(x, residual=1)
    with pytest.raises(
        ValueError, match=r"test\.tanh: mode must be one of 'vjp', 'jvp'; got 'fwd'"
    ):
        make_tanh()(x, mode="fwd")


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"forward": 1.0}, "forward"),
        ({"derivative": "cos"}, "derivative"),
        ({"derivative_from_output": 3}, "derivative_from_output"),
        ({"name": 3}, "name"),
        ({"name": None}, "name"),
    ],
)
def test_construction_errors_name_the_argument(kwargs, argument):
    args = {"forward": jnp.sin, "derivative": jnp.cos, "name": "test.sin", **kwargs}
    forward = args.pop("forward")
    with pytest.raises(TypeError, match=rf"custom_activation: {argument} must be"):
        sl.custom_activation(forward, **args)


# ------------------------------------------------------------------------------ derivatives


# Away from ELU's kink at 0 (its second derivative jumps there).
XD = jnp.asarray([-2.5, -1.0, -0.3, 0.4, 1.2, 2.0], jnp.float64)


def test_check_grads():
    act = make_tanh()  # (the ELU is checked against its analytic derivatives below)
    for residual in act.residuals:
        check_grads(functools.partial(act, residual=residual), (XD,), order=2, modes=["rev"])
    fj = functools.partial(act, mode="jvp")
    check_grads(fj, (XD,), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("make", [make_tanh, make_elu], ids=["tanh", "elu"])
def test_first_and_second_derivatives_match_analytic(make):
    act, xs = make(), np.asarray(XD)
    if make is make_tanh:
        t = np.tanh(xs)
        d1, d2 = 1 / np.cosh(xs) ** 2, -2 * t / np.cosh(xs) ** 2
    else:
        d1, d2 = np.where(xs > 0, 1.0, np.exp(xs)), np.where(xs > 0, 0.0, np.exp(xs))
    for residual in act.residuals:
        for mode in MODES:
            f = functools.partial(act, residual=residual, mode=mode)
            g1, g2 = first_and_second(f)(XD)
            msg = f"{residual}-{mode}"
            np.testing.assert_allclose(g1, d1, rtol=1e-14, atol=1e-16, err_msg=msg)
            np.testing.assert_allclose(g2, d2, rtol=1e-13, atol=1e-16, err_msg=msg)


def test_jvp_mode_supports_forward_mode_and_keeps_one_array():
    sigmoid = make_sigmoid()
    v = jnp.asarray([-30.0, -2.0, 0.0, 0.5, 3.0], jnp.float64)
    s = 1 / (1 + np.exp(-np.asarray(v)))
    d1, d2 = s * (1 - s), s * (1 - s) * (1 - 2 * s)
    for residual in sigmoid.residuals:
        f = functools.partial(sigmoid, residual=residual, mode="jvp")
        forward_mode = jax.jit(
            lambda v: (
                *jax.jvp(f, (v,), (2 * jnp.ones_like(v),)),
                jax.jacfwd(f)(v),
                jax.hessian(lambda v: jnp.sum(f(v)))(v),
            )
        )
        y, t, jac, hess = forward_mode(v)
        np.testing.assert_allclose(y, s, rtol=1e-15)
        np.testing.assert_allclose(t, 2 * d1, rtol=1e-14)
        np.testing.assert_allclose(np.diag(jac), d1, rtol=1e-14)
        np.testing.assert_allclose(np.diag(hess), d2, rtol=1e-13, atol=1e-300)
        assert np.count_nonzero(hess - np.diag(np.diag(hess))) == 0
        # Reverse mode through the custom_jvp rule still keeps only the chosen residual.
        assert len(residual_arrays(lambda v: jnp.sum(f(v)), X64)) == 1, residual
    # A custom_vjp rule cannot be used in forward mode: mode="vjp" says so.
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(sigmoid, (v,), (v,))


@pytest.mark.parametrize("mode", MODES)
def test_higher_derivatives_differentiate_the_users_derivative(mode):
    """A deliberately wrong slope for forward(x) = x: the docstring's promise, made visible.

    The first derivative is the declared slope, not autodiff of forward (which is 1), and the
    second is autodiff of the declared slope (true second derivative of x: 0).
    """
    wrong = sl.custom_activation(
        lambda x: x,
        derivative=jnp.cos,
        derivative_from_output=lambda y: y**2,
        name="test.wrong",
    )
    x = jnp.asarray([-1.5, -0.2, 0.0, 0.7, 2.0], jnp.float64)
    xs = np.asarray(x)
    for residual in ("input", "derivative"):
        g1, g2 = first_and_second(functools.partial(wrong, residual=residual, mode=mode))(x)
        np.testing.assert_allclose(g1, np.cos(xs), rtol=1e-15)
        np.testing.assert_allclose(g2, -np.sin(xs), rtol=1e-15)
    # With residual="output" the slope is y², and its derivative 2y · dy/dx, where dy/dx is
    # itself the declared y² (the rule differentiates its own output): 2x³.
    g1, g2 = first_and_second(functools.partial(wrong, residual="output", mode=mode))(x)
    np.testing.assert_allclose(g1, xs**2, rtol=1e-15)
    np.testing.assert_allclose(g2, 2 * xs**3, rtol=1e-15)


# ------------------------------------------------------------------------------ dtypes


def recording_tanh(seen):
    """tanh whose functions record the dtype they are traced with (a trace-time side effect)."""

    def forward(x):
        seen.append(("forward", x.dtype))
        return jnp.tanh(x)

    def derivative(x):
        seen.append(("derivative", x.dtype))
        return 1 / jnp.cosh(x) ** 2

    def derivative_from_output(y):
        seen.append(("derivative_from_output", y.dtype))
        return (1 - y) * (1 + y)

    return sl.custom_activation(
        forward,
        derivative=derivative,
        derivative_from_output=derivative_from_output,
        name="test.recording",
    )


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("mode", MODES)
def test_dtype_rules(name, mode):
    dt = np_dtype(name)
    compute = np.dtype("float32") if name in ("float16", "bfloat16") else dt
    x = jnp.asarray(np.linspace(-4, 4, 24).reshape(4, 6), dt)
    w = jnp.asarray(np.cos(np.arange(24)).reshape(4, 6), dt)  # a non-uniform cotangent
    seen = []
    act = recording_tanh(seen)
    for residual in act.residuals:
        f = functools.partial(act, residual=residual, mode=mode)
        y, vjp = jax.vjp(f, x)
        (g,) = vjp(w)
        assert y.dtype == dt and g.dtype == dt, residual  # output and cotangent: x's dtype
        kept = residual_arrays(lambda x: jnp.sum(f(x)), x)
        assert [a.dtype for a in kept] == [dt], residual  # the kept array: x's dtype too
    # Every user function was traced, and only ever in the compute dtype (float32 for half).
    assert {fn for fn, _ in seen} == {"forward", "derivative", "derivative_from_output"}
    assert {d for _, d in seen} == {compute}, seen


# residual="output" gradient where |tanh x| <= 1/2, measured 0.734 (float16), 0.707 (bfloat16);
# over every value it reaches 2045 / 256 ulps where y has rounded to ±1 and the slope to 0.
OUTPUT_GRAD_ULPS = {"float16": 0.75, "bfloat16": 0.75}


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_rounded_once(name):
    """Every finite value: within 0.5 ulp (+ float32's own error) of the float64 tanh."""
    x = sweep(name)
    x64 = x.astype(np.float64)
    tanh = make_tanh()
    y = jax.jit(tanh)(jnp.asarray(x))
    err = ulp_error(y, np.tanh(x64), name)
    assert err.max() <= 0.501, err.max()  # measured 0.49994 (float16), 0.49844 (bfloat16)
    # The gradient from the input, or from the slope kept in half precision: rounded once.
    with np.errstate(over="ignore"):
        d = 1 / np.cosh(x64) ** 2
    normal = d >= float(jnp.finfo(jnp.float32).tiny)  # XLA flushes float32 subnormals
    for residual in ("input", "derivative"):
        g = jax.jit(grad_of(functools.partial(tanh, residual=residual)))(jnp.asarray(x))
        gerr = ulp_error(np.asarray(g)[normal], d[normal], name).max()
        assert gerr <= 0.501, (residual, gerr)  # measured 0.50009 / 0.49968
    # From the kept output, rounded to half precision first: (1 - y)(1 + y) inherits y's
    # rounding, amplified where |y| -> 1; where |y| <= 1/2 it costs a quarter ulp more.
    g = jax.jit(grad_of(functools.partial(tanh, residual="output")))(jnp.asarray(x))
    mid = np.abs(np.tanh(x64)) <= 0.5
    gerr = ulp_error(np.asarray(g)[mid], d[mid], name).max()
    assert gerr <= OUTPUT_GRAD_ULPS[name], gerr


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.int64, jnp.uint8, jnp.bool_])
def test_integers_promote_like_jax_nn(dtype):
    x = jnp.asarray([0, 1, 1], dtype)
    y = make_sigmoid()(x)
    # jax.nn.sigmoid itself rejects integers (lax.logistic needs floats); the promotion is
    # that of jax.nn.softplus and jax.nn.log_sigmoid (bool: softplus).
    assert y.dtype == jax.nn.softplus(x).dtype
    if dtype != jnp.bool_:
        assert y.dtype == jax.nn.log_sigmoid(x).dtype
    ref = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    assert ulp_error(y, ref, y.dtype.name).max() <= 1.0


def test_complex_input_raises_type_error():
    with pytest.raises(TypeError, match="test.tanh.*complex64"):
        make_tanh()(jnp.ones(3, jnp.complex64))


# ------------------------------------------------------------------------------ memory


@pytest.mark.parametrize("mode", MODES)
def test_every_kept_array_is_tagged_with_the_name(mode):
    act = make_tanh(name="my.tanh")
    x = jnp.linspace(-3.0, 3.0, 64, dtype=jnp.float32).reshape(8, 8)
    for residual in act.residuals:
        f = functools.partial(act, residual=residual, mode=mode)

        def kept(policy_name):
            ck = jax.checkpoint(
                lambda x: jnp.sum(f(jnp.sin(x))),
                policy=checkpoint_policies.save_only_these_names(policy_name),
            )
            return [d for _, d in saved_residuals(ck, x) if "from the argument" not in d]

        assert len(kept("my.tanh")) == 1, (residual, kept("my.tanh"))
        assert len(kept("test.tanh")) == 0, residual


def test_output_residual_mlp_needs_the_memory_of_identity():
    # float32 temp bytes of an 8-layer MLP step, measured: identity 4.72 MB; the user-built
    # sigmoid and tanh with residual="output" 4.72 MB (1.00x, both modes). (With
    # residual="input" the sigmoid needs 8.39 MB, 1.78x; XLA fuses the tanh's recomputation.)
    identity = mlp_temp_bytes(lambda h: h)
    sigmoid, tanh = make_sigmoid(), make_tanh()
    for act in (sigmoid, tanh):
        ours = mlp_temp_bytes(act)
        assert ours <= 1.05 * identity, (act.name, ours, identity)
    assert mlp_temp_bytes(functools.partial(sigmoid, mode="jvp")) <= 1.05 * identity


# ------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize("mode", MODES)
def test_jit_vmap_and_scan(mode):
    tanh = functools.partial(make_tanh(), mode=mode)
    x = jnp.asarray(np.linspace(-2, 2, 12).reshape(3, 4), jnp.float64)
    xs = np.asarray(x)
    np.testing.assert_allclose(jax.jit(tanh)(x), np.tanh(xs), rtol=1e-15)
    per_row = jax.vmap(jax.grad(lambda r: jnp.sum(tanh(r))))(x)
    np.testing.assert_allclose(per_row, 1 - np.tanh(xs) ** 2, rtol=1e-14)

    # Three steps of h <- tanh(w * h) inside lax.scan, differentiated through the loop.
    def loop(h0, w):
        def step(h, _):
            h = tanh(w * h)
            return h, h

        h, hs = jax.lax.scan(step, h0, None, length=3)
        return jnp.sum(h), hs

    h0, w = jnp.asarray([0.3, -1.2, 2.0], jnp.float64), jnp.float64(0.8)
    (total, hs), (g_h0, g_w) = jax.jit(jax.value_and_grad(loop, argnums=(0, 1), has_aux=True))(
        h0, w
    )
    # The analytic chain rule, in float64 NumPy.
    h, dh_dh0, dh_dw = np.asarray(h0), np.ones(3), np.zeros(3)
    for _ in range(3):
        z = 0.8 * h
        s = 1 - np.tanh(z) ** 2
        dh_dh0, dh_dw = s * 0.8 * dh_dh0, s * (h + 0.8 * dh_dw)
        h = np.tanh(z)
    np.testing.assert_allclose(hs[-1], h, rtol=1e-15)
    np.testing.assert_allclose(total, h.sum(), rtol=1e-15)
    np.testing.assert_allclose(g_h0, dh_dh0, rtol=1e-14)
    np.testing.assert_allclose(g_w, dh_dw.sum(), rtol=1e-14)


def test_a_formula_may_close_over_a_traced_array():
    """A formula that reads a traced array (a scale inside the user's ``jit``) runs inlined:
    it once reached the lowering as a constant and failed there. (Differentiate such a scale
    by passing it as a parameter, ``act(x, a)``.)"""

    def scaled(a, x):
        act = sl.custom_activation(
            lambda x: x * a, derivative=lambda x: a * jnp.ones_like(x), name="scaled"
        )
        return act(x)

    x = jnp.arange(3.0)
    np.testing.assert_array_equal(jax.jit(scaled)(2.0, x), np.array([0.0, 2.0, 4.0]))
