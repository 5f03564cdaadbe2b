"""The Equinox, linen and nnx layers against the functional kernels and against each other.

For the same arguments all four give bit-identical outputs, input gradients and (for a
learnable β) gradients of the stored ``log_beta``, where the functional side is the documented
parametrisation ``softplus(x, beta=exp(log_beta).astype(x.dtype), ...)``. Also: importing
``stable_layers`` imports neither framework, and each submodule names its extra when its
framework is missing.
"""

import json
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import registry
from flax import nnx

import stable_layers as sl
from stable_layers import equinox as sl_eqx
from stable_layers import linen as sl_linen
from stable_layers import nnx as sl_nnx

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16


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


# ----------------------------------------------------------------------------------------
# One function per implementation: (x, log_beta) -> y, with log_beta None when not learnable.
# ----------------------------------------------------------------------------------------


def softplus_impls(beta, threshold, learnable, residual, mode, param_dtype=F32):
    kw = dict(threshold=threshold, residual=residual, mode=mode)
    lkw = dict(learnable=learnable, residual=residual, mode=mode, param_dtype=param_dtype)

    def functional(x, lb):
        # β in the dtype the kernel computes x in (integers promote as in jax.nn.softplus).
        x_float = jax.eval_shape(jax.nn.softplus, x).dtype
        b = beta if lb is None else jnp.exp(lb).astype(x_float)
        return sl.softplus(x, beta=b, **kw)

    m_eqx = sl_eqx.Softplus(beta, threshold, **lkw)

    def equinox(x, lb):
        m = m_eqx if lb is None else eqx.tree_at(lambda m: m.log_beta, m_eqx, lb)
        return m(x)

    m_linen = sl_linen.Softplus(beta, threshold, **lkw)

    def linen(x, lb):
        return m_linen.apply({} if lb is None else {"params": {"log_beta": lb}}, x)

    graphdef, state = nnx.split(sl_nnx.Softplus(beta, threshold, **lkw))

    def flax_nnx(x, lb):
        st = state if lb is None else jax.tree.map(lambda _: lb, state)
        return nnx.merge(graphdef, st)(x)

    return {"functional": functional, "equinox": equinox, "linen": linen, "nnx": flax_nnx}


def outputs_and_grads(f, x, lb, w):
    """y and the gradients of sum(w * y) with respect to x and (if learnable) log β, jitted."""

    @jax.jit
    def run(x, lb):
        if lb is None:
            y, vjp = jax.vjp(lambda x: f(x, None), x)
            return y, *vjp(w), None
        y, vjp = jax.vjp(f, x, lb)
        return y, *vjp(w)

    return run(x, lb)


def assert_all_identical(results):
    ref_name, ref = "functional", results["functional"]
    for name, res in results.items():
        for what, a, r in zip(("output", "x-gradient", "log_beta-gradient"), res, ref):
            if r is None:
                assert a is None
                continue
            assert a.dtype == r.dtype and a.shape == r.shape, (name, what)
            assert np.all(np.isfinite(np.asarray(a, np.float64))), (name, what)
            np.testing.assert_array_equal(
                np.asarray(a, np.float64),
                np.asarray(r, np.float64),
                err_msg=f"{name} vs {ref_name}: {what}",
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
    lb = jnp.asarray(np.log(beta) + 0.1, F32) if learnable else None  # a trained-looking β
    impls = softplus_impls(beta, threshold, learnable, residual, mode)
    assert_all_identical({k: outputs_and_grads(f, x, lb, w) for k, f in impls.items()})


@pytest.mark.parametrize("learnable", [False, True])
def test_softplus_agree_in_bfloat16_with_float32_parameter(learnable):
    x, w = inputs(BF16)
    lb = jnp.asarray(0.3, F32) if learnable else None
    impls = softplus_impls(1.5, None, learnable, "output", "vjp")
    results = {k: outputs_and_grads(f, x, lb, w) for k, f in impls.items()}
    y, gx, glb = results["functional"]
    assert y.dtype == BF16 and gx.dtype == BF16
    assert glb is None or glb.dtype == F32
    assert_all_identical(results)


def test_learnable_modules_start_at_the_same_parameter():
    kw = dict(learnable=True, param_dtype=F64)
    lb_eqx = sl_eqx.Softplus(3.0, **kw).log_beta
    lb_linen = sl_linen.Softplus(3.0, **kw).init(jax.random.key(0), jnp.ones(2))["params"]
    lb_nnx = sl_nnx.Softplus(3.0, **kw).log_beta[...]
    assert lb_eqx.dtype == lb_linen["log_beta"].dtype == lb_nnx.dtype == F64
    assert float(lb_eqx) == float(lb_linen["log_beta"]) == float(lb_nnx) == np.log(3.0)


# ----------------------------------------------------------------------------------------
# Every registry entry with a layer, every policy and mode (softplus at its default β = 1).
# ----------------------------------------------------------------------------------------


def layer_impls(entry, residual, mode):
    """fn and its three layers, as (x, lb) -> y with lb unused (no learnable parameter)."""
    kw = dict(residual=residual, mode=mode)
    m_eqx = getattr(sl_eqx, entry.layer)(**kw)
    m_linen = getattr(sl_linen, entry.layer)(**kw)
    m_nnx = getattr(sl_nnx, entry.layer)(**kw)
    return {
        "functional": lambda x, lb: entry.fn(x, **kw),
        "equinox": lambda x, lb: m_eqx(x),
        "linen": lambda x, lb: m_linen.apply({}, x),
        "nnx": lambda x, lb: m_nnx(x),
    }


LAYER_CASES = [c for c in registry.cases() if c.values[0].layer is not None]
LAYER_ENTRIES = [pytest.param(e, id=e.name) for e in registry.ENTRIES if e.layer is not None]


def all_outputs_and_grads(impls, x, w):
    """outputs_and_grads of every implementation, in one jitted call (one compile, not four)."""

    @jax.jit
    def run(x):
        out = {}
        for k, f in impls.items():
            y, vjp = jax.vjp(lambda x: f(x, None), x)
            out[k] = (y, *vjp(w), None)
        return out

    return run(x)


@pytest.mark.parametrize("entry,residual,mode", LAYER_CASES)
def test_layers_and_functional_agree(entry, residual, mode):
    x, w = inputs(F32)
    assert_all_identical(all_outputs_and_grads(layer_impls(entry, residual, mode), x, w))


@pytest.mark.parametrize("entry", LAYER_ENTRIES)
def test_layers_agree_in_bfloat16(entry):
    x, w = inputs(BF16)
    impls = layer_impls(entry, next(iter(entry.residuals)), "vjp")
    results = all_outputs_and_grads(impls, x, w)
    for name, (y, gx, _) in results.items():
        assert y.dtype == BF16 and gx.dtype == BF16, name
    assert_all_identical(results)


def test_jvp_mode_hessians_agree_across_frameworks():
    x = jnp.linspace(-30, 30, 7, dtype=F64)
    impls = softplus_impls(2.0, None, True, "output", "jvp", param_dtype=F64)
    lb = jnp.asarray(0.2, F64)
    hessians = {
        k: jax.jit(jax.hessian(lambda xb: jnp.sum(f(xb[:-1], xb[-1]))))(jnp.append(x, lb))
        for k, f in impls.items()
    }
    for name, h in hessians.items():
        assert np.all(np.isfinite(h)), name
        np.testing.assert_array_equal(h, hessians["functional"], err_msg=name)


@pytest.mark.parametrize("learnable", [False, True])
def test_integer_inputs_promote_like_the_kernel(learnable):
    x = jnp.arange(-3, 4, dtype=jnp.int32)
    impls = softplus_impls(1.0, None, learnable, "output", "vjp")
    lb = jnp.asarray(0.0, F32) if learnable else None
    ys = {k: jax.jit(f)(x, lb) for k, f in impls.items()}
    expected = sl.softplus(x)  # integers promote as in jax.nn.softplus; β = exp(0) = 1
    for name, y in ys.items():
        assert y.dtype == expected.dtype, name
        np.testing.assert_array_equal(y, expected, err_msg=name)
