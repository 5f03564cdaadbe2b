"""Shared by the Equinox, linen and nnx layers: layers from declarations, and learnable β.

No kernel math lives here: every layer calls its kernel. What is shared is how a layer reads
and checks its options and turns its stored parameter into the kernel's argument, so the
three frameworks compute exactly the same thing.

A parameterless activation's layer is made, not written: :class:`Elementwise` reads the
function's signature (the options after ``x``, their defaults, which are positional) and its
docstring, and each framework module turns that into a class with one small factory. A layer
validates its options at construction exactly as its function does, by tracing the function
once on a scalar (``jax.eval_shape``, nothing is computed); the error then names the layer.

A learnable β is stored as ``log_beta`` (a scalar in ``param_dtype``) and used as
``beta = exp(log_beta)``, which is positive for every finite ``log_beta``: no gradient step can
make it zero or negative, and no clipping or projection is needed. Its gradient is the
kernel's β cotangent times ``dβ/dlog β = β``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import textwrap
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import _snake, _softplus
from ._activation import Activation
from ._checks import (
    MODES,
    as_float_array,
    check_bool,
    check_choice,
    check_float_dtype,
    check_layer_beta,
    check_threshold,
    is_static_number,
)

PARAM_NAME = "log_beta"


def check_softplus_args(
    fn: str,
    beta: Any,
    threshold: Any,
    learnable: Any,
    residual: Any,
    mode: Any,
    param_dtype: Any,
) -> None:
    """Raises TypeError/ValueError naming the first bad argument, its value and the choices."""
    check_options(fn, _softplus._rule, residual, mode)
    check_layer_beta(fn, beta)
    check_threshold(fn, threshold)
    check_bool(fn, "learnable", learnable)
    check_float_dtype(fn, "param_dtype", param_dtype)


def check_options(fn: str, activation: Activation, residual: Any, mode: Any) -> None:
    """Raises ValueError naming a bad ``residual`` or ``mode`` and the activation's choices."""
    check_choice(fn, "residual", residual, activation.residuals)
    check_choice(fn, "mode", mode, MODES)


def init_log_beta(fn: str, beta: Any, param_dtype: Any) -> jax.Array:
    """The stored parameter for an initial β: ``log β`` as a scalar of ``param_dtype``.

    The log is taken in float64 and rounded once, so ``exp(log_beta)`` is β to within an ulp
    of ``param_dtype`` (exactly 1 for β = 1).
    """
    beta = check_layer_beta(fn, beta)
    param_dtype = check_float_dtype(fn, "param_dtype", param_dtype)
    return jnp.asarray(math.log(beta), dtype=param_dtype)


def apply_softplus(
    fn: str,
    x: Any,
    log_beta: jax.Array | None,
    *,
    beta: float | jax.Array,
    threshold: float | None,
    residual: Any,
    mode: Any,
    dtype: Any = None,
) -> jax.Array:
    """Calls the softplus kernel with a layer's β: the static ``beta``, or ``exp(log_beta)``.

    ``exp`` is taken in the parameter's dtype and the result cast to the input's dtype (flax
    ``PReLU``'s rule), so bfloat16 in gives bfloat16 out and the kernel's β cotangent flows
    back through the cast into ``param_dtype``. With ``dtype`` set, the input is cast to it
    first (flax nnx's ``dtype`` convention).
    """
    if dtype is not None or log_beta is not None:
        x = as_float_array(fn, x)
    if dtype is not None:
        x = x.astype(dtype)
    if log_beta is not None:
        beta = jnp.exp(log_beta).astype(x.dtype)
    return _softplus.softplus(x, beta=beta, threshold=threshold, residual=residual, mode=mode)


# --------------------------------------------------------------------------------------
# Layers made from an activation function's declaration.
# --------------------------------------------------------------------------------------

_ARGS = re.compile(r"^Args:\n(.*?)(?:\n\n\S|\Z)", re.M | re.S)
_ARG = re.compile(r"^    (\w+): ", re.M)


def _arg_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` entries of ``fn``'s Google-style docstring, by name, as written there
    (first line ``    name: ...``, continuation lines indented by 8)."""
    found = _ARGS.search(inspect.getdoc(fn) or "")
    if found is None:
        return {}
    body = found.group(1)
    starts = [m.start() for m in _ARG.finditer(body)] + [len(body)]
    entries = [body[i:j].rstrip() for i, j in zip(starts, starts[1:])]
    return {e.split(":", 1)[0].strip(): e for e in entries}


def check_as_function(layer: str, fn: Callable[..., jax.Array], *args: Any, **kwargs: Any):
    """Raises what ``fn(x, *args, **kwargs)`` raises for its arguments, naming ``layer``.

    The function is traced once on a scalar of the default float dtype (``jax.eval_shape``:
    nothing is computed), so a layer accepts exactly what its function accepts (``bits`` with
    ``residual``, ``alpha``'s range), with the same messages.
    """
    x = jax.ShapeDtypeStruct((), jnp.result_type(float))
    try:
        jax.eval_shape(lambda x: fn(x, *args, **kwargs), x)
    except (TypeError, ValueError) as err:
        msg = str(err)
        name = getattr(fn, "name", fn.__name__)
        msg = msg.removeprefix(f"{name}: ")
        raise type(err)(f"{layer}: {msg}") from None


class Elementwise:
    """A parameterless activation's layer, read from its function ``fn(x, <options>)``.

    Attributes:
        fn: The public function (it carries its checkpoint ``name``).
        layer: The layer's full name, ``stable_layers.<framework>.<Name>``, for errors.
        signature: The layer's constructor signature: the function's, less ``x``.
        options: The option names, in order.
    """

    def __init__(self, fn: Callable[..., jax.Array], layer: str):
        self.fn = fn
        self.layer = layer
        params = list(inspect.signature(fn).parameters.values())[1:]
        for p in params:
            kinds = (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if p.kind not in kinds or p.default is p.empty:
                # A parameter without a default is learnable or required (snake's alpha):
                # such a layer is written by hand.
                raise TypeError(f"{layer}: {fn.__name__}'s option {p.name!r} has no default.")
        self.signature = inspect.Signature(params)
        self.options = tuple(p.name for p in params)

    @property
    def positional(self) -> tuple[inspect.Parameter, ...]:
        return tuple(
            p for p in self.signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
        )

    @property
    def keyword_only(self) -> tuple[inspect.Parameter, ...]:
        return tuple(p for p in self.signature.parameters.values() if p.kind is p.KEYWORD_ONLY)

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The options a constructor call gives, defaults filled in (TypeError as for a call)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{self.layer}: {err}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def check(self, options: dict[str, Any]) -> None:
        """Raises what ``fn(x, **options)`` raises for its options, naming the layer."""
        check_as_function(self.layer, self.fn, **options)

    def __call__(self, x: Any, options: dict[str, Any]) -> jax.Array:
        return self.fn(x, **options)

    def doc(self, call: str) -> str:
        """The layer's docstring: the function's summary and its options' own words.

        ``call`` is how the framework calls a layer ``m`` on ``x`` (``"m(x)"``,
        ``"m.apply({}, x)"``), for the example.
        """
        fn_doc = inspect.getdoc(self.fn) or self.fn.__name__
        path = f"stable_layers.{self.fn.__name__}"
        framework, name = self.layer.split(".")[-2:]
        args = _arg_docs(self.fn)
        arg_lines = "\n".join(
            textwrap.indent(args.get(o, f"    {o}: As in :func:`{path}`."), "    ")
            for o in self.options
        )
        plain = [p.replace(annotation=p.empty) for p in self.signature.parameters.values()]
        signature = f"{name}{inspect.Signature(plain)}"
        example = call.replace("m", f"{name}()", 1)
        return f"""The layer form of :func:`{path}`: {fn_doc.splitlines()[0]}

    ``{signature}``

    The options and defaults of :func:`{path}`, stored on the layer, which calls the
    function with them: see there for the math, the guarantees and the dtype rules (bfloat16
    in, bfloat16 out). The layer holds no arrays and no math of its own; it checks its
    options when it is built, as the function checks them.

    Args:
{arg_lines}

    Raises:
        TypeError, ValueError: at construction, for an option the function rejects, naming
            the layer, the option, the value and the choices.

    Examples:
        >>> import jax.numpy as jnp
        >>> import stable_layers as sl
        >>> from stable_layers.{framework} import {name}
        >>> x = jnp.linspace(-4.0, 4.0, 9)
        >>> bool(jnp.array_equal({example}, sl.{self.fn.__name__}(x)))
        True
    """


# --------------------------------------------------------------------------------------
# Snake: a learnable α per channel.
# --------------------------------------------------------------------------------------

SNAKE_PARAM = "log_alpha"


def check_snake_args(
    fn: str,
    channels: Any,
    alpha: Any,
    learnable: Any,
    channel_axis: Any,
    residual: Any,
    mode: Any,
    param_dtype: Any,
) -> None:
    """Raises TypeError/ValueError naming the first bad argument, its value and the choices."""
    if not isinstance(channels, numbers.Integral) or isinstance(channels, bool):
        raise TypeError(f"{fn}: channels must be a positive int; got {channels!r}.")
    if channels < 1:
        raise ValueError(f"{fn}: channels must be a positive int; got {channels!r}.")
    check_bool(fn, "learnable", learnable)
    if not is_static_number(alpha):
        raise TypeError(
            f"{fn}: alpha must be a finite Python number (the fixed alpha, or the initial alpha "
            f"of every channel when learnable=True); got {alpha!r}."
        )
    try:
        value = float(alpha)
    except OverflowError:
        value = math.inf
    if learnable and not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{fn}: alpha must be a positive finite number when learnable=True (the layer "
            f"stores log(alpha)); got {alpha!r}."
        )
    if not isinstance(channel_axis, numbers.Integral) or isinstance(channel_axis, bool):
        raise TypeError(f"{fn}: channel_axis must be an int (an axis of x); got {channel_axis!r}.")
    check_float_dtype(fn, "param_dtype", param_dtype)
    # The fixed alpha (finite, any sign), residual and mode, exactly as snake checks them.
    check_as_function(fn, _snake.snake, value, residual=residual, mode=mode)


def init_log_alpha(fn: str, channels: int, alpha: float, param_dtype: Any) -> jax.Array:
    """The stored parameter: ``log α`` for every channel, ``(channels,)`` of ``param_dtype``.

    The log is taken in float64 and rounded once, so ``exp(log_alpha)`` is α to within an
    ulp of ``param_dtype``.
    """
    check_float_dtype(fn, "param_dtype", param_dtype)
    return jnp.full((channels,), math.log(alpha), dtype=param_dtype)


def apply_snake(
    fn: str,
    x: Any,
    log_alpha: jax.Array | None,
    *,
    alpha: float,
    channels: int,
    channel_axis: int,
    residual: Any,
    mode: Any,
) -> jax.Array:
    """Calls the snake kernel with a layer's α: the static ``alpha``, or ``exp(log_alpha)``
    laid along ``channel_axis``.

    ``exp`` is taken in the parameter's dtype and cast to the input's dtype, as softplus's β
    is, so bfloat16 in gives bfloat16 out and α's cotangent flows back into ``param_dtype``.
    """
    x = as_float_array(fn, x)
    axis = channel_axis + x.ndim if channel_axis < 0 else channel_axis
    if not 0 <= axis < x.ndim or x.shape[axis] != channels:
        raise ValueError(
            f"{fn}: x of shape {x.shape} has no axis channel_axis={channel_axis} of size "
            f"channels={channels}."
        )
    if log_alpha is None:
        return _snake.snake(x, alpha, residual=residual, mode=mode)
    shape = [1] * x.ndim
    shape[axis] = channels
    a = jnp.exp(log_alpha).astype(x.dtype).reshape(shape)
    return _snake.snake(x, a, residual=residual, mode=mode)
