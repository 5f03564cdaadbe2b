"""The one place where custom derivative rules are built: :func:`custom_activation`.

Every activation in this package is a declaration: its value, its slope ``dy/dx`` (from the
input, and where it can, from the output) and its name. This module turns a declaration into a
function with

* a ``jax.custom_vjp`` rule (``mode="vjp"``) and a ``jax.custom_jvp`` rule (``mode="jvp"``),
  built once here for every activation;
* residual policies that decide what the backward pass keeps (``"input"``, ``"derivative"``,
  ``"output"``, or a policy of the activation's own), each kept array tagged with
  ``jax.ad_checkpoint.checkpoint_name``;
* the dtype rules of the built-ins: half precision is computed in float32 and rounded once, the
  output and the cotangent have the input's dtype, integers promote like ``jax.nn``, complex
  input raises TypeError.

Built-in activations may also take parameters (softplus's β): each is either a Python float,
a compile-time constant, or an array, which is differentiable. One rule serves both: the rules
are defined with ``symbolic_zeros=True``, so they see whether a parameter is being
differentiated and keep the input for its derivative only then.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

from ._checks import MODES, as_float_array, check_choice, compute_dtype

Array = jax.Array


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


def _store_half(y: Array, x: Array) -> Array:
    """``y``, already rounded to x's dtype, written once as float16 rather than recomputed.

    Applied only where a backward pass will follow (the rules' forward passes), so a plain
    forward call pays nothing for it.

    XLA:CPU's fusion cost model counts an f32->f16 convert as cheap and copies it, with the
    elementwise chain before it, into every consumer, so a float16 output is never stored and
    the backward pass re-derives it from float32 intermediates (the matmul output and the
    activation's inner terms): 8 bytes per element kept instead of 2. A divide counts as
    expensive, so it is computed once and its float16 result stored. Exact: the divisor is 1
    (0 only for a NaN x, whose output is NaN anyway). bfloat16 needs nothing (f32->bf16
    already counts as expensive). ``benchmarks/results.md``'s memory table measures it.
    """
    return y / (x == x).astype(y.dtype) if y.dtype == jnp.float16 else y


def _after(a: Array, g: Array) -> Array:
    """``a``, made to depend on the cotangent ``g`` (equal to ``a`` unless g is NaN, when the
    cotangent is NaN anyway), so XLA cannot hoist the slope's transcendental into the forward
    pass, where its float32 result would stay live until the backward pass."""
    return jnp.where(g != g, jnp.nan, a)


def up(a: Array) -> Array:
    """``a`` in the compute dtype: float32 for half precision, its own dtype otherwise."""
    return a.astype(compute_dtype(a.dtype))


class Activation:
    """An elementwise activation with custom derivative rules; see :func:`custom_activation`.

    Calling it as ``act(x, *params, residual=..., mode=...)`` validates the options, promotes
    ``x`` and runs the chosen rule under ``jax.jit`` (an eager call is one compiled kernel;
    inside a user's ``jit`` it inlines away).

    Beyond :func:`custom_activation`'s arguments, the built-ins may declare
    ``param_derivatives`` (``(x, *params) -> dy/dparam`` for each parameter, e.g. softplus's
    β), ``policies`` of their own (xsin's ``"input_and_sin"``), the valid ``residuals`` (the
    default first), and ``value_and_derivative``: ``x -> (y, dy/dx)`` in one pass, taking and
    returning x's own dtype, used by the ``"derivative"`` policy's forward pass (x·sin x gets
    both from one range reduction). Grad-of-grad differentiates it with autodiff.

    Attributes:
        name: The ``checkpoint_name`` every kept array is tagged with.
        residuals: The valid residual policies, the default first.
    """

    def __init__(
        self,
        forward: Callable[..., Array],
        *,
        derivative: Callable[..., Array],
        derivative_from_output: Callable[..., Array] | None = None,
        name: str,
        param_derivatives: Callable[..., tuple[Array, ...]] | None = None,
        policies: dict[str, Policy] | None = None,
        residuals: tuple[str, ...] | None = None,
        value_and_derivative: Callable[..., tuple[Array, Array]] | None = None,
    ):
        self.forward = forward
        self.derivative = derivative
        self._value_and_derivative = value_and_derivative
        self.name = name
        self._param_derivatives = param_derivatives
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
        self._policies = {r: every[r] for r in residuals}
        self._vjp = _vjp_rule(self)
        self._jvp = _jvp_rule(self)
        self._jitted = jax.jit(self._apply, static_argnames=("static", "residual", "mode"))

    def __repr__(self) -> str:
        return f"Activation(name={self.name!r}, residuals={self.residuals!r})"

    def __call__(self, x: Any, *params: Any, residual: str | None = None, mode: str = "vjp"):
        residual = self.residuals[0] if residual is None else residual
        check_choice(self.name, "residual", residual, self.residuals)
        check_choice(self.name, "mode", mode, MODES)
        x = as_float_array(self.name, x)
        static = tuple(p if isinstance(p, float) else None for p in params)
        dyn = tuple(p for p in params if not isinstance(p, float))
        return self._jitted(x, dyn, static=static, residual=residual, mode=mode)

    def _apply(self, x, dyn, *, static, residual, mode):
        return (self._vjp if mode == "vjp" else self._jvp)(x, dyn, (static, residual))

    # The pieces both rules share. ``cfg = (static, residual)`` is hashable: the Python-float
    # parameters (None where an array parameter goes) and the policy.

    def _params(self, dyn, static, dtype):
        """Every parameter in order, arrays cast to ``dtype``."""
        dyn = iter(dyn)
        return tuple(next(dyn).astype(dtype) if p is None else p for p in static)

    def _value(self, x, dyn, cfg):
        cd = compute_dtype(x.dtype)
        return self.forward(x.astype(cd), *self._params(dyn, cfg[0], cd)).astype(x.dtype)

    def _keep(self, x, y, dyn, cfg, params_differentiated):
        """The arrays the backward pass keeps, plus ``x`` for a differentiated parameter."""
        policy = self._policies[cfg[1]]
        saved = policy.keep(x, y, self._params(dyn, cfg[0], compute_dtype(x.dtype)))
        x_for_params = x if params_differentiated and not policy.keeps_input else None
        return checkpoint_name((saved, x_for_params), self.name)

    def _slope(self, kept, dyn, cfg, g=None):
        cd = compute_dtype(kept[0][0].dtype)
        params = self._params(dyn, cfg[0], cd)
        saved = tuple(map(up, kept[0]))
        if g is not None:  # vjp: compute the slope only once the cotangent exists
            saved = tuple(_after(s, g) for s in saved)
        return self._policies[cfg[1]].slope(saved, params), params

    def _input(self, kept, cfg):
        return kept[0][0] if self._policies[cfg[1]].keeps_input else kept[1]

    def _param_slopes(self, kept, params, cfg):
        return self._param_derivatives(up(self._input(kept, cfg)), *params)


def _vjp_rule(act: Activation):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def rule(x, dyn, cfg):
        return act._value(x, dyn, cfg)

    def fwd(x, dyn, cfg):
        differentiated = any(p.perturbed for p in dyn)
        x, dyn = x.value, tuple(p.value for p in dyn)
        if act._value_and_derivative is not None and cfg[1] == "derivative" and not dyn:
            # Both from one pass (x·sin x: one range reduction). Grad-of-grad differentiates
            # this pair with autodiff, so the declaration must be accurately differentiable.
            # It takes x in its own dtype and returns both in it, so a half-precision
            # rounding can happen inside its own pass.
            y, d = act._value_and_derivative(x)
            kept = checkpoint_name(((d,), None), act.name)
            y = _store_half(y, x)
            return y, (kept, dyn, None)
        # y through the custom_jvp rule: grad-of-grad differentiates this forward and then
        # gets the declared derivatives instead of autodiff of the forward formula.
        y = _store_half(act._jvp(x, dyn, cfg), x)
        # The flag travels as the residual's structure: () when the parameters are being
        # differentiated, None when not (a residual must be a pytree of arrays).
        flag = () if differentiated else None
        return y, (act._keep(x, y, dyn, cfg, differentiated), dyn, flag)

    def bwd(cfg, res, g):
        kept, dyn, flag = res
        gc = up(g)
        slope, params = act._slope(kept, dyn, cfg, gc)
        gx = (gc * slope).astype(g.dtype)
        if flag is None:
            return gx, tuple(None for _ in dyn)  # None: a zero cotangent
        slopes = act._param_slopes(kept, params, cfg)
        dparams = [s for s, p in zip(slopes, cfg[0]) if p is None]
        return gx, tuple(
            _sum_to_shape(gc * s, p.shape).astype(p.dtype) for s, p in zip(dparams, dyn)
        )

    rule.defvjp(fwd, bwd, symbolic_zeros=True)
    return rule


def _jvp_rule(act: Activation):
    @functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
    def rule(x, dyn, cfg):
        return act._value(x, dyn, cfg)

    @functools.partial(rule.defjvp, symbolic_zeros=True)
    def jvp(cfg, primals, tangents):
        (x, dyn), (dx, ddyn) = primals, tangents
        # The rule calls itself for the primal, so derivatives of any order use it.
        y = _store_half(rule(x, dyn, cfg), x)
        wanted = tuple(not isinstance(t, SymbolicZero) for t in ddyn)
        kept = act._keep(x, y, dyn, cfg, any(wanted))

        # Under jax.checkpoint, reverse mode linearizing this keeps the map's inputs (the
        # policy's arrays) rather than the slope it computes, a second full-size array.
        @jax.checkpoint
        def tangent_map(kept, dyn, dx, ddyn):
            slope, params = act._slope(kept, dyn, cfg)
            dy = jnp.zeros_like(slope) if dx is None else up(dx) * slope
            if any(wanted):
                slopes = act._param_slopes(kept, params, cfg)
                dparams = [s for s, p in zip(slopes, cfg[0]) if p is None]
                for s, t in zip(dparams, ddyn):
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
    ``xsin``, ``log_sigmoid``) do: the returned function ``fn(x, *, residual=..., mode="vjp")``
    computes ``forward(x)`` and differentiates it with the slope you give, keeping only what
    ``residual`` says.

    * ``residual="input"`` keeps ``x``; the backward pass computes ``derivative(x)``.
    * ``residual="derivative"`` keeps ``derivative(x)``; the backward pass is one multiply.
    * ``residual="output"`` keeps ``y``, which the next layer keeps anyway, and the backward
      pass computes ``derivative_from_output(y)``. Valid only when that is given. For a
      monotone activation whose slope is a function of its output (sigmoid, tanh, softplus,
      ELU on its negative side, …) an MLP training step then needs the temp memory of the
      same MLP with no activation.

    The default is ``"output"`` when ``derivative_from_output`` is given, else
    ``"derivative"``. Each kept array is tagged ``jax.ad_checkpoint.checkpoint_name(.., name)``
    so a ``jax.checkpoint`` policy can select it.

    ``mode="vjp"`` builds the rule with ``jax.custom_vjp`` (reverse mode and grad-of-grad);
    ``mode="jvp"`` with ``jax.custom_jvp``, so ``jax.jvp``, ``jax.jacfwd`` and
    ``jax.hessian`` work too, while reverse mode still keeps only the chosen residual (the
    tangent map runs under ``jax.checkpoint``). Derivatives beyond the first differentiate your
    ``derivative`` (or ``derivative_from_output``) with ordinary autodiff, so they are as
    accurate as those functions are differentiable; write them with stable formulas.

    Dtypes, as for the built-ins: float16 and bfloat16 inputs are computed in float32 and
    rounded once (your functions always see float32 or float64); the output and the cotangent
    have the input's dtype, and kept arrays too; integers and booleans promote like
    ``jax.nn`` functions; complex input raises TypeError.

    Args:
        forward: ``x -> y``, elementwise, written with ``jax.numpy``; called in the compute
            dtype.
        derivative: ``x -> dy/dx``, elementwise.
        derivative_from_output: ``y -> dy/dx``, elementwise, for activations whose slope is a
            function of their output; enables ``residual="output"``.
        name: The ``checkpoint_name`` of every kept array, and the prefix of error messages.

    Returns:
        An :class:`Activation`: call it as ``fn(x, *, residual=..., mode="vjp")``. Its
        ``residuals`` attribute lists the valid policies, the default first. An invalid
        ``residual`` or ``mode`` raises ValueError naming the argument, the value and the
        valid choices.

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
    return Activation(
        forward,
        derivative=derivative,
        derivative_from_output=derivative_from_output,
        name=name,
    )
