"""The one place where custom derivative rules are built: :func:`custom_activation`.

Every activation in this package is a declaration: its value, its slope ``dy/dx`` (from the
input, and where it can, from the output) and its name. This module turns a declaration into a
function with

* a ``jax.custom_vjp`` rule (``mode="vjp"``) and a ``jax.custom_jvp`` rule (``mode="jvp"``),
  built once here for every activation;
* residual policies that decide what the backward pass keeps (``"input"``, ``"derivative"``,
  ``"output"``, or a policy of the activation's own), each kept array tagged with
  ``jax.ad_checkpoint.checkpoint_name``;
* slope codes (``bits=``): the ``"derivative"`` policy's slope kept as packed k-bit codes;
* the dtype rules of the built-ins: half precision is computed in float32 and rounded once, the
  output and the cotangent have the input's dtype, integers promote like ``jax.nn``, complex
  input raises TypeError.

Built-in activations may also take parameters (softplus's β): each is either a Python float,
a compile-time constant, or an array, which is traced (a new value never recompiles) and
differentiable. One rule serves both: the rules are defined with ``symbolic_zeros=True``, so
they see whether a parameter is being differentiated and keep the input for its derivative
only then.

Two devices here are tuned to XLA:CPU's fusion heuristics and measured only there
(``benchmarks/results.md``); :func:`on_cpu` lowers them for CPU alone, and every other backend
gets the plain formula. :func:`plain_everywhere` traces the plain formula on CPU too, so the
tests check it here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ._checks import MODES, as_float_array, check_choice, compute_dtype

Array = jax.Array

BITS = (1, 2, 4, 8)

# --------------------------------------------------------------------------------------
# Backend-specific code, only where it was measured.
# --------------------------------------------------------------------------------------

_plain_everywhere = False


@contextlib.contextmanager
def plain_everywhere() -> Iterator[None]:
    """Within this block, trace every backend's plain formula on CPU too (for testing it).

    Traces are cached, so the block clears JAX's caches on entry and on exit.
    """
    global _plain_everywhere
    jax.clear_caches()
    _plain_everywhere = True
    try:
        yield
    finally:
        _plain_everywhere = False
        jax.clear_caches()


def on_cpu(cpu: Callable[..., Any], default: Callable[..., Any], *args: Array) -> Any:
    """``cpu(*args)`` in a program lowered for CPU, ``default(*args)`` for any other backend.

    ``cpu`` and ``default`` must compute the same values (``default`` is the plain formula;
    ``cpu`` arranges it for XLA:CPU's fusion heuristics). The choice is made when lowering,
    so a GPU or TPU program holds ``default``'s operations alone, with no conditional
    (``jax.lax.platform_dependent`` leaves a ``case`` behind), and the derivatives of both are
    those of ``default``.
    """
    if _plain_everywhere:
        return default(*args)
    return _bind(cpu, default, args)


def whole(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as one primitive: partial evaluation keeps it whole (it runs where its inputs'
    values are known, or is staged out entire).

    Inlined, the jaxpr of a formula shows JAX each ``jnp.where``'s broadcast constant as an
    operation of its own, with no input. Under ``lax.scan``, JAX's partial evaluation then
    hoists every such constant out of the loop as a full-size loop-invariant residual: XLA:CPU
    kept ten hidden-size arrays for the whole step for the exact gelu's formula in scanned
    blocks (``tests/test_memory.py::test_scanned_blocks_keep_one_array_per_block``). Lowered,
    the primitive inlines ``fn``'s operations: XLA sees what it saw before. Python scalars
    among the arguments stay constants; its derivatives are ``fn``'s.

    A formula with an effect (a ``jax.debug.callback``, an ``io_callback``), or one that
    closes over a traced array, runs inlined, as written, so that JAX sees the effect or the
    array.
    """

    @functools.wraps(fn)
    def run(*args):
        leaves, tree = jax.tree.flatten(args)
        static = [isinstance(a, (bool, int, float)) for a in leaves]

        def call(*arrays):
            it = iter(arrays)
            full = [a if s else next(it) for a, s in zip(leaves, static)]
            return fn(*jax.tree.unflatten(tree, full))

        arrays = [a for a, s in zip(leaves, static) if not s]
        closed, shapes = jax.make_jaxpr(call, return_shape=True)(*arrays)
        if closed.effects or any(isinstance(c, jax.core.Tracer) for c in closed.consts):
            return call(*arrays)
        out_tree = jax.tree.structure(shapes)
        as_fun = jax.extend.core.jaxpr_as_fun(closed)

        def replay(*arrays):  # the traced formula, without tracing fn again
            return jax.tree.unflatten(out_tree, as_fun(*arrays))

        return _bind(replay, replay, arrays)

    return run


def _bind(cpu: Callable[..., Any], default: Callable[..., Any], args: Any) -> Any:
    flat, in_tree = jax.tree.flatten(args)
    out_tree: list[Any] = []  # the output's structure, recorded by the bind's abstract evaluation

    def flat_fn(fn):
        def run(*flat):
            out, tree = jax.tree.flatten(fn(*jax.tree.unflatten(in_tree, flat)))
            out_tree[:] = [tree]
            return out

        return run

    out = _on_cpu_p.bind(*flat, cpu=flat_fn(cpu), default=flat_fn(default))
    if not out_tree:  # a transformation that did not trace ``default`` for this bind
        out_tree.append(jax.tree.structure(jax.eval_shape(default, *args)))
    return jax.tree.unflatten(out_tree[0], out)


_on_cpu_p = Primitive("stable_layers_on_cpu")
_on_cpu_p.multiple_results = True
_on_cpu_p.def_impl(lambda *args, cpu, default: jax.jit(default)(*args))
_on_cpu_p.def_abstract_eval(
    lambda *avals, cpu, default: [
        jax.core.ShapedArray(a.shape, a.dtype, weak_type=a.weak_type)
        for a in jax.eval_shape(default, *avals)
    ]
)
mlir.register_lowering(
    _on_cpu_p, mlir.lower_fun(lambda *a, cpu, default: default(*a), multiple_results=True)
)
mlir.register_lowering(
    _on_cpu_p,
    mlir.lower_fun(lambda *a, cpu, default: cpu(*a), multiple_results=True),
    platform="cpu",
)


def _on_cpu_jvp(primals, tangents, *, cpu, default):
    tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
    _, out_tangents = jax.jvp(default, tuple(primals), tangents)
    return _on_cpu_p.bind(*primals, cpu=cpu, default=default), out_tangents


def _on_cpu_batch(args, dims, *, cpu, default):
    # An unmapped argument's dimension is None.
    args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    axes = [None if d is None else 0 for d in dims]
    out = _on_cpu_p.bind(
        *args, cpu=jax.vmap(cpu, in_axes=axes), default=jax.vmap(default, in_axes=axes)
    )
    return out, [0] * len(out)


ad.primitive_jvps[_on_cpu_p] = _on_cpu_jvp
batching.primitive_batchers[_on_cpu_p] = _on_cpu_batch


def _store_half(y: Array, x: Array) -> Array:
    """``y``, already rounded to x's dtype, written once as float16 rather than recomputed (CPU).

    Applied only where a backward pass will follow (the rules' forward passes), so a plain
    forward call pays nothing for it.

    XLA:CPU's fusion cost model counts an f32->f16 convert as cheap and copies it, with the
    elementwise chain before it, into every consumer, so a float16 output is never stored and
    the backward pass re-derives it from float32 intermediates (the matmul output and the
    activation's inner terms): 8 bytes per element kept instead of 2. A divide counts as
    expensive, so it is computed once and its float16 result stored. The divisor is
    ``(x == x) | (x != x)``, 1 for every x (NaN included), so the value is exactly ``y``.
    bfloat16 needs nothing (f32->bf16 already counts as expensive). Other backends: ``y``.
    """
    if y.dtype != jnp.float16:
        return y

    def divide(y, x):
        return y / ((x == x) | (x != x)).astype(y.dtype)

    return on_cpu(divide, lambda y, x: y, y, x)


def _after(a: Array, g: Array) -> Array:
    """``a``, made to depend on the cotangent ``g`` (CPU; elsewhere ``a`` itself).

    Equal to ``a`` unless g is NaN, when the cotangent is NaN anyway: XLA:CPU cannot then
    hoist the slope's transcendental into the forward pass, where its float32 result would
    stay live until the backward pass.
    """
    return on_cpu(lambda a, g: jnp.where(g != g, jnp.nan, a), lambda a, g: a, a, g)


def up(a: Array) -> Array:
    """``a`` in the compute dtype: float32 for half precision, its own dtype otherwise."""
    return a.astype(compute_dtype(a.dtype))


# --------------------------------------------------------------------------------------
# Slope codes (bits=).
# --------------------------------------------------------------------------------------


class Codes(NamedTuple):
    """A slope kept as packed ``bits``-bit codes: all a coded backward pass keeps.

    Attributes:
        words: uint32, ``ceil(size / (32 // bits))`` of them, each holding ``32 // bits``
            codes (the first in the lowest bits).
        low: The smallest finite slope, a scalar in the compute dtype.
        half_step: Half the distance between two levels, a scalar (halved so that
            ``max - min`` cannot overflow at ±finfo.max).
        nonfinite: True if some slope is NaN or ±inf; the top code then marks them.
    """

    words: Array
    low: Array
    half_step: Array
    nonfinite: Array


@jax.custom_jvp
def _first_order_only(d: Array) -> Array:
    return d


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
    # Runs when the forward pass of a coded rule is itself differentiated: grad-of-grad,
    # jax.hessian. Raising here, before the packing reduction, names the cause (the JVP of
    # an integer reduction fails with an unrelated TypeError in some jax versions).
    raise ValueError(
        "stable_layers: a backward pass with slope codes (bits=...) has no derivatives of its "
        "own: the kept slope is piecewise constant. For grad-of-grad, jax.hessian or "
        "forward-over-reverse, call the activation with bits=None."
    )


def encode(d: Array, bits: int) -> Codes:
    """``d`` (the slope, in the compute dtype) as ``bits``-bit codes over its finite range.

    Uniform levels from the smallest to the largest finite slope of this tensor: every
    finite slope decodes to within ``(max - min) / (2**bits - 1)`` (half that, plus
    rounding, when every slope is finite); a one-valued tensor decodes exactly. Where a slope
    is NaN or ±inf the top code is reserved for it and decodes to NaN.
    """
    d = _first_order_only(d)
    if d.size == 0:
        return _encode(d, bits)
    return on_cpu(
        functools.partial(_encode_in_cond, bits=bits), functools.partial(_encode, bits=bits), d
    )


def _encode_in_cond(d: Array, bits: int) -> Codes:
    """:func:`_encode` inside a ``lax.cond`` whose branches are the same (XLA:CPU).

    XLA:CPU does not fuse across a conditional: inside one, the range's reductions and the
    packing run back to back, and the step keeps 24 MiB less in the benchmark's float32 MLP
    (120 -> 96 MiB for a custom SiLU; ``python benchmarks/run.py`` measures it). The predicate
    reads one element, so XLA cannot fold it.
    """
    first = d.reshape(-1)[0]
    encode_d = functools.partial(_encode, bits=bits)
    return jax.lax.cond(first == first, encode_d, encode_d, d)


def _encode(d: Array, bits: int) -> Codes:
    finite = jnp.isfinite(d)
    # Masked, not jnp.nanmin: XLA:CPU's min/max ignore NaN above some size and propagate it
    # below, and ±inf must not set the range either.
    low = jnp.min(jnp.where(finite, d, jnp.inf), initial=jnp.inf)
    high = jnp.max(jnp.where(finite, d, -jnp.inf), initial=-jnp.inf)
    none_finite = low > high
    low = jnp.where(none_finite, 0, low)
    high = jnp.where(none_finite, 0, high)
    nonfinite = ~jnp.all(finite)
    top = 2**bits - 1
    levels = jnp.where(nonfinite, top - 1, top).astype(d.dtype)  # the highest finite code
    # Halves: high - low overflows for slopes near ±finfo.max, high/2 - low/2 does not.
    half_span = high * 0.5 - low * 0.5
    half_step = jnp.where(levels > 0, half_span / jnp.maximum(levels, 1), 0)
    safe_step = jnp.where(half_step > 0, half_step, 1)
    # XLA divides by multiplying with the reciprocal, which flushes to 0 for a step near
    # finfo.max: scale both by a power of two (exact) where the step is large.
    scale = jnp.where(safe_step > 1, 2.0**-64, 1.0).astype(d.dtype)
    code = jnp.round(((d * 0.5 - low * 0.5) * scale) / (safe_step * scale))
    code = jnp.clip(jnp.where(half_step > 0, code, 0), 0, levels)
    code = jnp.where(finite, code, top).astype(jnp.uint32)
    return Codes(_pack(code, bits), low, half_step, nonfinite)


def decode(codes: Codes, bits: int, shape: tuple[int, ...]) -> Array:
    """The slope :func:`encode` kept, in the compute dtype, of ``shape``."""
    code = _unpack(codes.words, bits, shape)
    top = 2**bits - 1
    low, half_step = codes.low, codes.half_step
    # (low/2 + code·step/2)·2 stays finite up to ±finfo.max, but for the rounding that the
    # clip takes back.
    slope = (low * 0.5 + code.astype(low.dtype) * half_step) * 2
    slope = jnp.clip(slope, low, jnp.finfo(low.dtype).max)
    return jnp.where(codes.nonfinite & (code == top), jnp.nan, slope)


def _pack(code: Array, bits: int) -> Array:
    # A sum over the packing axis: XLA:CPU stores a reduction's result, so the codes are
    # written out (unpacked uint8 codes would be fused into the backward pass, keeping x).
    per_word = 32 // bits
    flat = code.reshape(-1)
    flat = jnp.pad(flat, (0, (-flat.size) % per_word))
    shifts = jnp.arange(per_word, dtype=jnp.uint32) * bits
    return jnp.sum(flat.reshape(-1, per_word) << shifts, axis=1, dtype=jnp.uint32)


def _unpack(words: Array, bits: int, shape: tuple[int, ...]) -> Array:
    per_word = 32 // bits
    shifts = jnp.arange(per_word, dtype=jnp.uint32) * bits
    code = (words[:, None] >> shifts) & jnp.uint32(2**bits - 1)
    size = 1
    for n in shape:
        size *= n
    return code.reshape(-1)[:size].reshape(shape)


def check_bits(fn: str, bits: Any) -> int | None:
    """``bits`` as an int from :data:`BITS`, or None; ValueError naming the choices otherwise."""
    if bits is None:
        return None
    ok = isinstance(bits, numbers.Integral) and not isinstance(bits, bool) and int(bits) in BITS
    if not ok:
        raise ValueError(f"{fn}: bits must be one of None, 1, 2, 4, 8; got {bits!r}.")
    return int(bits)


# --------------------------------------------------------------------------------------
# The declaration and the two rules.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a residual policy keeps for the backward pass, and how it gets the slope back.

    Attributes:
        keep: ``(x, y, params) -> tuple of arrays``. ``x`` and ``y`` have the input's dtype;
            ``params`` are in the compute dtype. What it returns is saved as it is, so a
            half-precision input keeps half-precision arrays.
        slope: ``(saved, params) -> dy/dx``: ``saved`` is what ``keep`` returned, cast to the
            compute dtype.
        keeps_input: ``keep(...)[0]`` is ``x`` itself, so a differentiated parameter, whose
            derivative needs ``x``, costs nothing more.
    """

    keep: Callable[..., tuple[Array, ...]]
    slope: Callable[..., Array]
    keeps_input: bool = False


class _Config(NamedTuple):
    """A call's static options (hashable: a ``nondiff_argnums`` argument of the rules)."""

    static: tuple[float | None, ...]  # each parameter's Python float, None for an array
    residual: str
    bits: int | None


class _Kept(NamedTuple):
    """What a rule's forward pass keeps for its backward pass (arrays only)."""

    saved: tuple[Array, ...] | Codes  # the policy's arrays, or the slope's codes
    input: tuple[Array, ...]  # (x,) when a parameter is differentiated, else ()


class Activation:
    """An elementwise activation with custom derivative rules: what :func:`custom_activation`
    returns, and what every built-in is declared as.

    Call it as ``act(x, *params, residual=None, bits=None, mode="vjp")``: it validates the
    options, promotes ``x`` and runs the chosen rule under ``jax.jit`` (an eager call is one
    compiled kernel; inside a user's ``jit`` it inlines away). A parameter is a Python float
    (a compile-time constant) or an array (traced and differentiable).

    Attributes:
        name: The ``checkpoint_name`` every kept array is tagged with.
        residuals: The valid residual policies, the default first.
    """

    def __init__(
        self,
        forward: Callable[..., Array],
        *,
        derivative: Callable[..., Array],
        derivative_from_output: Callable[..., Array] | None,
        name: str,
        param_derivatives: Callable[..., tuple[Array, ...]] | None,
        policies: dict[str, Policy] | None,
        residuals: tuple[str, ...] | None,
        value_and_derivative: Callable[..., tuple[Array, Array]] | None,
    ):
        forward, derivative = whole(forward), whole(derivative)
        if value_and_derivative is not None:
            value_and_derivative = whole(value_and_derivative)
        self.forward = forward
        self.derivative = derivative
        self.value_and_derivative = value_and_derivative
        self.name = name
        self.param_derivatives = param_derivatives
        every = {
            "input": Policy(lambda x, y, p: (x,), lambda s, p: derivative(s[0], *p), True),
            "derivative": Policy(
                lambda x, y, p: (derivative(up(x), *p).astype(x.dtype),), lambda s, p: s[0]
            ),
        }
        if derivative_from_output is not None:
            every["output"] = Policy(
                lambda x, y, p: (y,), lambda s, p: derivative_from_output(s[0], *p)
            )
        every.update(policies or {})
        if residuals is None:
            default = "output" if derivative_from_output is not None else "derivative"
            residuals = (default, *(r for r in every if r != default))
        self.residuals = residuals
        self.policies = {r: every[r] for r in residuals}
        self._vjp = _vjp_rule(self)
        self._jvp = _jvp_rule(self)
        self._jitted = jax.jit(self._apply, static_argnames=("config", "mode"))

    def __repr__(self) -> str:
        return f"Activation(name={self.name!r}, residuals={self.residuals!r})"

    def _options(self, residual: Any, bits: Any, mode: Any) -> tuple[str, int | None]:
        """Validates the options; returns the residual policy and the bits they select."""
        fn = self.name
        check_choice(fn, "mode", mode, MODES)
        bits = check_bits(fn, bits)
        if bits is None:
            residual = self.residuals[0] if residual is None else residual
            return check_choice(fn, "residual", residual, self.residuals), None
        if "derivative" not in self.residuals:
            raise ValueError(
                f"{fn}: bits={bits!r} needs a 'derivative' residual policy, which this "
                f"activation does not have (its residuals: {', '.join(map(repr, self.residuals))})"
                "; use bits=None."
            )
        if residual not in (None, "derivative"):
            raise ValueError(
                f"{fn}: bits={bits!r} keeps the slope as codes, so residual must be left out or "
                f"'derivative'; got residual={residual!r}."
            )
        if mode != "vjp":
            raise ValueError(
                f"{fn}: bits={bits!r} is for reverse mode (mode='vjp'); got mode={mode!r}."
            )
        return "derivative", bits

    def __call__(
        self,
        x: Any,
        *params: Any,
        residual: str | None = None,
        bits: int | None = None,
        mode: str = "vjp",
    ) -> Array:
        residual, bits = self._options(residual, bits, mode)
        x = as_float_array(self.name, x)
        static = tuple(p if isinstance(p, float) else None for p in params)
        dyn = tuple(jnp.asarray(p) for p in params if not isinstance(p, float))
        config = _Config(static, residual, bits)
        return self._jitted(x, dyn, config=config, mode=mode)

    def _apply(self, x, dyn, *, config, mode):
        return (self._vjp if mode == "vjp" else self._jvp)(x, dyn, config)

    # The pieces both rules share.

    def _params(self, dyn, config, dtype):
        """Every parameter in order, arrays cast to ``dtype``."""
        dyn = iter(dyn)
        return tuple(next(dyn).astype(dtype) if p is None else p for p in config.static)

    def _value(self, x, dyn, config):
        cd = compute_dtype(x.dtype)
        return self.forward(x.astype(cd), *self._params(dyn, config, cd)).astype(x.dtype)

    def _keep(self, x, y, dyn, config, params_differentiated) -> tuple[Array, _Kept]:
        """(the output to return, what the backward pass keeps).

        Where the policy keeps the output itself, the returned output is the tagged array
        the rule keeps: one array, not ``y`` and a tagged copy of it. Under ``lax.scan`` each
        distinct array the backward pass needs is stacked, and the next layer's matmul keeps
        the output too (``tests/test_memory.py::test_scanned_blocks_keep_the_output_once``:
        float32 softplus blocks needed 23.5 MiB, the identity's 15.5, before this).
        """
        policy = self.policies[config.residual]
        raw = policy.keep(x, y, self._params(dyn, config, compute_dtype(x.dtype)))
        saved = checkpoint_name(raw, self.name)
        y = next((s for r, s in zip(raw, saved) if r is y), y)
        if not params_differentiated:
            return y, _Kept(saved, ())
        # A policy that keeps x already gives the parameters' derivatives what they need.
        x_kept = saved[0] if policy.keeps_input else checkpoint_name(x, self.name)
        return y, _Kept(saved, (x_kept,))

    def _slope(self, kept, dyn, config, g=None):
        cd = compute_dtype(kept.saved[0].dtype)
        params = self._params(dyn, config, cd)
        saved = tuple(map(up, kept.saved))
        if g is not None:  # vjp: compute the slope only once the cotangent exists
            saved = tuple(_after(s, g) for s in saved)
        return self.policies[config.residual].slope(saved, params), params

    def _param_slopes(self, x, params, config):
        """The derivative of each array parameter, in order."""
        slopes = self.param_derivatives(up(x), *params)
        return [s for s, p in zip(slopes, config.static) if p is None]


def _vjp_rule(act: Activation):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def rule(x, dyn, config):
        return act._value(x, dyn, config)

    def fwd(x, dyn, config):
        differentiated = any(p.perturbed for p in dyn)
        x, dyn = x.value, tuple(p.value for p in dyn)
        one_pass = act.value_and_derivative is not None and config.residual == "derivative"
        if config.bits is not None:
            cd = compute_dtype(x.dtype)
            params = act._params(dyn, config, cd)
            if one_pass and not dyn:
                y, d = act.value_and_derivative(x.astype(cd))
                y = y.astype(x.dtype)
            else:
                y, d = act._value(x, dyn, config), act.derivative(x.astype(cd), *params)
            codes = encode(d, config.bits)
            kept = _Kept(codes, _input_for_params(x, dyn, differentiated))
            return y, (checkpoint_name(kept, act.name), dyn)
        if one_pass and not dyn:
            # Both from one pass (x·sin x: one range reduction). Grad-of-grad differentiates
            # this pair with autodiff, so the declaration must be accurately differentiable.
            # It takes x in its own dtype and returns both in it, so a half-precision
            # rounding can happen inside its own pass.
            y, d = act.value_and_derivative(x)
            return _store_half(y, x), (checkpoint_name(_Kept((d,), ()), act.name), dyn)
        # y through the custom_jvp rule: grad-of-grad differentiates this forward and then
        # gets the declared derivatives instead of autodiff of the forward formula.
        y = _store_half(act._jvp(x, dyn, config), x)
        y, kept = act._keep(x, y, dyn, config, differentiated)
        if dyn and not differentiated:
            empty = _input_for_params(x, dyn, False)
            kept = kept._replace(input=checkpoint_name(empty, act.name))
        return y, (kept, dyn)

    def bwd(config, res, g):
        kept, dyn = res
        gc = up(g)
        if config.bits is not None:
            slope = decode(kept.saved, config.bits, g.shape)
            params = act._params(dyn, config, gc.dtype)
        else:
            slope, params = act._slope(kept, dyn, config, gc)
        gx = (gc * slope).astype(g.dtype)
        if not kept.input or kept.input[0].size == 0:
            return gx, tuple(None for _ in dyn)  # None: a zero cotangent
        slopes = act._param_slopes(kept.input[0], params, config)
        return gx, tuple(
            _sum_to_shape(gc * s, p.shape).astype(p.dtype) for s, p in zip(slopes, dyn)
        )

    rule.defvjp(fwd, bwd, symbolic_zeros=True)
    return rule


def _input_for_params(x: Array, dyn: tuple[Array, ...], differentiated: bool) -> tuple[Array, ...]:
    """What the vjp rule keeps for the parameters' cotangents: ``x``, or an empty stand-in.

    The kept pytree has the same structure whether or not a parameter is differentiated
    (``x``, or an empty array when none is), and neither leaf is an input passed through:
    JAX caches the residual structure of a ``custom_vjp`` forward with a traced jaxpr and can
    reuse it for another differentiation of the same jaxpr, so a structure that depended on
    which inputs are perturbed would not match the residuals of the second one.
    """
    if not dyn:
        return ()
    return (x if differentiated else jnp.zeros((0,), x.dtype),)


def _jvp_rule(act: Activation):
    @functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
    def rule(x, dyn, config):
        return act._value(x, dyn, config)

    @functools.partial(rule.defjvp, symbolic_zeros=True)
    def jvp(config, primals, tangents):
        (x, dyn), (dx, ddyn) = primals, tangents
        # The rule calls itself for the primal, so derivatives of any order use it.
        y = _store_half(rule(x, dyn, config), x)
        wanted = tuple(not isinstance(t, SymbolicZero) for t in ddyn)
        y, kept = act._keep(x, y, dyn, config, any(wanted))

        # Under jax.checkpoint, reverse mode linearizing this keeps the map's inputs (the
        # policy's arrays) rather than the slope it computes, a second full-size array.
        @jax.checkpoint
        def tangent_map(kept, dyn, dx, ddyn):
            slope, params = act._slope(kept, dyn, config)
            dy = jnp.zeros_like(slope) if dx is None else up(dx) * slope
            if kept.input:
                slopes = act._param_slopes(kept.input[0], params, config)
                for s, t in zip(slopes, ddyn):
                    if t is not None:
                        dy = dy + up(t) * s
            return dy.astype(x.dtype)

        dx = None if isinstance(dx, SymbolicZero) else dx
        ddyn = tuple(None if isinstance(t, SymbolicZero) else t for t in ddyn)
        return y, tangent_map(kept, dyn, dx, ddyn)

    return rule


def _sum_to_shape(g: Array, shape: tuple[int, ...]) -> Array:
    """Transpose of broadcasting ``shape`` up to ``g.shape``: sum the broadcast axes."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return jnp.sum(g, axis=axes).reshape(shape) if axes else g.reshape(shape)


def declare(
    forward: Callable[..., Array],
    *,
    derivative: Callable[..., Array],
    derivative_from_output: Callable[..., Array] | None = None,
    name: str,
    param_derivatives: Callable[..., tuple[Array, ...]] | None = None,
    policies: dict[str, Policy] | None = None,
    residuals: tuple[str, ...] | None = None,
    value_and_derivative: Callable[..., tuple[Array, Array]] | None = None,
) -> Activation:
    """A built-in's declaration: :func:`custom_activation`'s arguments and a few more.

    Args:
        forward, derivative, derivative_from_output, name: as in :func:`custom_activation`,
            each taking the parameters after ``x`` (``(x, *params)``).
        param_derivatives: ``(x, *params) -> tuple of dy/dparam``, one per parameter (e.g.
            softplus's β); needed when a parameter may be an array.
        policies: Residual policies of the activation's own (xsin's ``"input_and_sin"``).
        residuals: The valid residual policies, the default first.
        value_and_derivative: ``x -> (y, dy/dx)`` in one pass, taking and returning x's own
            dtype, used by the ``"derivative"`` policy's forward pass (x·sin x gets both from
            one range reduction). Grad-of-grad differentiates it with autodiff.
    """
    return Activation(
        forward,
        derivative=derivative,
        derivative_from_output=derivative_from_output,
        name=name,
        param_derivatives=param_derivatives,
        policies=policies,
        residuals=residuals,
        value_and_derivative=value_and_derivative,
    )


def custom_activation(
    forward: Callable[[Array], Array],
    *,
    derivative: Callable[[Array], Array],
    derivative_from_output: Callable[[Array], Array] | None = None,
    name: str,
) -> Activation:
    """Builds a memory-aware elementwise activation from its value and its slope.

    ``jax.custom_vjp`` is the raw tool for an activation whose backward pass should keep less
    than autodiff does, but each use re-derives the residual plumbing, the dtype handling and
    the forward-mode story. This builder does it once, as the built-ins (``softplus``,
    ``xsin``, ``log_sigmoid``) do: the returned function
    ``fn(x, *, residual=None, bits=None, mode="vjp")`` computes ``forward(x)`` and
    differentiates it with the slope you give, keeping only what ``residual`` says.

    * ``residual="input"`` keeps ``x``; the backward pass computes ``derivative(x)``.
    * ``residual="derivative"`` keeps ``derivative(x)``; the backward pass is one multiply.
    * ``residual="output"`` keeps ``y``, which the next layer keeps anyway, and the backward
      pass computes ``derivative_from_output(y)``. Valid only when that is given. For a
      monotone activation whose slope is a function of its output (sigmoid, tanh, softplus,
      ELU on its negative side, …) an MLP training step then needs the temp memory of the
      same MLP with no activation.
    * ``bits=1, 2, 4 or 8`` keeps ``derivative(x)`` as packed ``bits``-bit codes: 32 / bits
      times less than a float32 slope (see "Slope codes" below).

    The default is ``"output"`` when ``derivative_from_output`` is given, else ``"input"``:
    in an MLP step of the benchmark harness, keeping the slope as a float array costs more
    than keeping ``x`` (``python benchmarks/run.py`` measures every policy). Each kept array
    is tagged ``jax.ad_checkpoint.checkpoint_name(.., name)`` so a ``jax.checkpoint`` policy
    can select it; the returned function's ``name`` attribute holds that name.

    **When output-saving costs accuracy.** With ``"output"`` the slope comes from ``y``
    rounded to the input's dtype. Where the slope is ill-conditioned in the output, as for
    saturating activations (tanh, sigmoid) near their asymptotes, a half-precision ``y``
    loses the slope: float16 tanh at x = 5 rounds ``y`` to 1 and the slope to 0 (exact:
    1.8e-4), as ``jax.nn.tanh``'s gradient does. Choose ``"derivative"`` (within 1 ulp in
    float16) or ``"input"`` there; ``"output"`` keeps the exact float32/float64 slope's
    accuracy only when ``derivative_from_output`` is well conditioned (softplus, ELU).

    **Slope codes.** With ``bits``, each call quantises the finite slopes of its tensor to
    ``2**bits`` uniform levels between their minimum and maximum and packs the codes into
    uint32 words; the decoded slope of every element is within
    ``(max - min) / (2**bits - 1)`` of ``derivative(x)``, a one-element tensor's slope is
    exact, and the forward value is bit for bit the value without ``bits``. A NaN or ±inf
    slope does not spoil the others: the top code is then reserved for it, and such an
    element's gradient is NaN. Under ``vmap`` each mapped slice is its own tensor, with its
    own range. Use codes for non-monotone activations in memory-bound training when exact
    second derivatives are not needed: the kept slope is piecewise constant, and
    differentiating the backward pass (grad-of-grad, ``jax.hessian``) raises ValueError
    naming ``bits``. Reverse mode only.

    ``mode="vjp"`` builds the rule with ``jax.custom_vjp`` (reverse mode and grad-of-grad);
    ``mode="jvp"`` with ``jax.custom_jvp``, so ``jax.jvp``, ``jax.jacfwd`` and
    ``jax.hessian`` work too, while reverse mode still keeps only the chosen residual (the
    tangent map runs under ``jax.checkpoint``). Derivatives beyond the first differentiate your
    ``derivative`` (or ``derivative_from_output``) with ordinary autodiff, so they are as
    accurate as those functions are differentiable; write them with stable formulas.

    Dtypes, as for the built-ins: float16 and bfloat16 inputs are computed in float32 and
    rounded once (your functions always see float32 or float64); the output and the cotangent
    have the input's dtype, and kept arrays too; integers and booleans promote like
    ``jax.nn`` functions; complex input raises TypeError. A plain call and a differentiated
    call return the same values, bit for bit.

    Args:
        forward: ``x -> y``, elementwise, written with ``jax.numpy``; called in the compute
            dtype.
        derivative: ``x -> dy/dx``, elementwise.
        derivative_from_output: ``y -> dy/dx``, elementwise, for activations whose slope is a
            function of their output; enables ``residual="output"``.
        name: The ``checkpoint_name`` of every kept array, and the prefix of error messages.

    Returns:
        An :class:`Activation`: call it as ``fn(x, *, residual=None, bits=None, mode="vjp")``.
        Its ``residuals`` attribute lists the valid policies, the default first, and ``name``
        the checkpoint name. An invalid ``residual``, ``bits`` or ``mode`` raises ValueError
        naming the argument, the value and the valid choices.

    Raises:
        TypeError: ``forward``, ``derivative`` or ``derivative_from_output`` is not callable,
            or ``name`` is not a string.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import stable_layers as sl
        >>> sigmoid = sl.custom_activation(
        ...     jax.nn.sigmoid,
        ...     derivative=lambda x: jax.nn.sigmoid(x) * jax.nn.sigmoid(-x),
        ...     derivative_from_output=lambda y: y * (1 - y),
        ...     name="my_sigmoid",
        ... )
        >>> sigmoid.residuals
        ('output', 'input', 'derivative')
        >>> x = jnp.array([-2.0, 0.0, 2.0], jnp.float32)
        >>> print(jax.grad(lambda x: sigmoid(x).sum())(x))
        [0.104994 0.25     0.104994]
        >>> print(sigmoid(x.astype(jnp.float16)).dtype)
        float16

        Slope codes, for a non-monotone SiLU (8 bits: 4 codes to a uint32 word):

        >>> silu = sl.custom_activation(
        ...     jax.nn.silu,
        ...     derivative=lambda x: jax.nn.sigmoid(x) * (1 + x * jax.nn.sigmoid(-x)),
        ...     name="my_silu",
        ... )
        >>> print(jax.grad(lambda x: silu(x, bits=8).sum())(x))  # exact: [-0.0908 0.5 1.0908]
        [-0.09078424  0.5023167   1.0907841 ]
    """
    for arg, value in [("forward", forward), ("derivative", derivative)]:
        if not callable(value):
            raise TypeError(f"custom_activation: {arg} must be callable; got {value!r}.")
    if derivative_from_output is not None and not callable(derivative_from_output):
        raise TypeError(
            "custom_activation: derivative_from_output must be callable or None; got "
            f"{derivative_from_output!r}."
        )
    if not isinstance(name, str):
        raise TypeError(f"custom_activation: name must be a str; got {name!r}.")
    return declare(
        forward,
        derivative=derivative,
        derivative_from_output=derivative_from_output,
        name=name,
        residuals=None if derivative_from_output is not None else ("input", "derivative"),
    )
