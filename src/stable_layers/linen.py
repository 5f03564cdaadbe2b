"""Flax linen layers for the stable activations.

Thin ``flax.linen.Module`` wrappers around the functional kernels: dataclass fields hold the
hyperparameters, a learnable β is one parameter created with ``self.param``, and ``__call__``
calls the kernel. They drop into ``flax.linen.Sequential`` or any ``@nn.compact`` method.
``Softplus`` is written by hand for its learnable β; every parameterless activation's layer
is made from its function by ``_elementwise``, with the function's options and defaults.

Requires Flax: ``pip install "stable-layers[flax]"``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

try:
    import flax.linen as nn
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "stable_layers.linen needs Flax, which is not installed. Install the extra with "
        'pip install "stable-layers[flax]"'
    ) from err

import jax
import jax.numpy as jnp

from . import _elu, _gelu, _layers, _log_sigmoid, _mish, _silu, _xsin

__all__ = ["CELU", "ELU", "GELU", "LogSigmoid", "Mish", "SELU", "SiLU", "Snake", "Softplus", "XSin"]

_SOFTPLUS = "stable_layers.linen.Softplus"
_SNAKE = "stable_layers.linen.Snake"


class Softplus(nn.Module):
    r"""The layer form of :func:`stable_layers.softplus`, optionally with a learnable β.

    See :func:`stable_layers.softplus` for the math, the guarantees, ``threshold``,
    ``residual``, ``mode`` and the dtype rules; the layer holds no math of its own. With
    ``learnable=True`` it has one parameter, ``params["log_beta"]`` (a scalar in
    ``param_dtype``), and uses ``β = exp(log_beta)``, positive for any value an optimiser gives
    it (the README's "Layers" section gives the floating-point range).

    Attributes:
        beta: The fixed β, or the initial β when ``learnable=True``: a positive finite number.
        threshold: ``None`` (default) or a number, as in ``torch.nn.Softplus``.
        learnable: If True (keyword-only), β is trained through the ``log_beta`` parameter.
            If False (default) ``init`` creates no variables at all.
        residual: ``"output"`` (default) or ``"input"``. A learnable β also keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
        param_dtype: The dtype ``log_beta`` is stored in (default float32); a floating dtype.

    Calling the layer on ``x`` (any shape) returns an array of ``x``'s shape and float dtype:
    bfloat16 in gives bfloat16 out, learnable or not, since β is cast to ``x``'s dtype as in
    ``nn.PReLU`` (the kernel computes half precision in float32 and rounds once). Integers
    promote to the default float dtype; complex raises TypeError.

    Raises:
        ValueError: when the layer is constructed (so before ``init``), for a bad
            ``residual``/``mode``/``threshold``/``param_dtype`` or ``beta <= 0``, NaN or inf.
        TypeError: likewise, for a non-number ``beta`` or a non-bool ``learnable``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.linen import Softplus
        >>> x = jnp.array([-100.0, 0.0, 100.0], jnp.float32)
        >>> print(Softplus().apply({}, x))
        [  0.          0.6931472 100.       ]
        >>> act = Softplus(2.0, learnable=True)
        >>> params = act.init(jax.random.key(0), x)["params"]
        >>> print(params["log_beta"].dtype, jnp.exp(params["log_beta"]))
        float32 2.0
        >>> grads = jax.grad(lambda p: act.apply({"params": p}, x).sum())(params)
        >>> print(grads["log_beta"])  # d/dlog β at x=0 is -log(2)/β
        -0.3465736
        >>> print(Softplus().apply({}, x.astype(jnp.bfloat16)).dtype)
        bfloat16

    References:
        ``torch.nn.Softplus`` for the ``beta``/``threshold`` convention; ``flax.linen.PReLU``
        for casting the parameter to the input's dtype.
    """

    beta: float = 1.0
    threshold: float | None = None
    _: dataclasses.KW_ONLY
    learnable: bool = False
    residual: str = "output"
    mode: str = "vjp"
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _layers.check_softplus_args(
            _SOFTPLUS,
            self.beta,
            self.threshold,
            self.learnable,
            self.residual,
            self.mode,
            self.param_dtype,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Any) -> jax.Array:
        log_beta = None
        if self.learnable:
            log_beta = self.param(
                _layers.PARAM_NAME,
                lambda _: _layers.init_log_beta(_SOFTPLUS, self.beta, self.param_dtype),
            )
        return _layers.apply_softplus(
            _SOFTPLUS,
            x,
            log_beta,
            beta=self.beta,
            threshold=self.threshold,
            residual=self.residual,
            mode=self.mode,
        )


class Snake(nn.Module):
    r"""The layer form of :func:`stable_layers.snake`, ``x + sin²(αx)/α``, with one learnable α
    per channel.

    See :func:`stable_layers.snake` for the math (written without dividing by α, so every α
    works, 0 included), the guarantees, ``residual``, ``mode`` and the dtype rules; the layer
    holds no math of its own. With ``learnable=True`` (default) it has one parameter,
    ``params["log_alpha"]`` of shape ``(channels,)`` in ``param_dtype``, and uses
    ``α = exp(log_alpha)``, as BigVGAN's log-scale option does: positive for any value an
    optimiser gives it. With ``learnable=False`` ``init`` creates no variables and the layer
    uses ``alpha`` for every channel.

    Attributes:
        channels: The number of channels: the size of ``x``'s ``channel_axis``.
        alpha: The fixed α (any finite number), or every channel's initial α when
            ``learnable=True`` (then positive: the layer stores ``log α``).
        learnable: If True (default; keyword-only), α is trained through ``log_alpha``.
        channel_axis: The axis of ``x`` the α vector runs along (keyword-only): ``-1``
            (default), Flax's features-last layout.
        residual: ``"input"``, snake's only policy: the backward pass keeps ``x``.
        mode: ``"vjp"`` (default) or ``"jvp"``.
        param_dtype: The dtype ``log_alpha`` is stored in (default float32); a floating dtype.

    Calling the layer on ``x`` returns an array of ``x``'s shape and float dtype: bfloat16 in
    gives bfloat16 out, since α is cast to ``x``'s dtype as in ``nn.PReLU`` (the kernel
    computes half precision in float32 and rounds once). Integers promote to the default
    float dtype; complex raises TypeError.

    Raises:
        TypeError, ValueError: when the layer is constructed (so before ``init``), for a bad
            ``channels``, ``alpha``, ``learnable``, ``channel_axis``, ``residual``, ``mode`` or
            ``param_dtype``; when called, for an ``x`` without ``channels`` entries along
            ``channel_axis``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from stable_layers.linen import Snake
        >>> x = jnp.linspace(-2.0, 2.0, 8).reshape(2, 4)  # (batch, channels)
        >>> act = Snake(4, 0.5)
        >>> params = act.init(jax.random.key(0), x)["params"]
        >>> print(params["log_alpha"].shape, jnp.exp(params["log_alpha"]))
        (4,) [0.5 0.5 0.5 0.5]
        >>> grads = jax.grad(lambda p: act.apply({"params": p}, x).sum())(params)
        >>> print(grads["log_alpha"].shape)
        (4,)
        >>> bool(jnp.array_equal(Snake(4, 0.0, learnable=False).apply({}, x), x))  # α = 0
        True

    References:
        Ziyin, Hartwig, Ueda (2020), "Neural Networks Fail to Learn Periodic Functions and How
        to Fix It"; BigVGAN (Lee et al. 2023) for the per-channel, log-scale α.
    """

    channels: int
    alpha: float = 1.0
    _: dataclasses.KW_ONLY
    learnable: bool = True
    channel_axis: int = -1
    residual: str = "input"
    mode: str = "vjp"
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _layers.check_snake_args(
            _SNAKE,
            self.channels,
            self.alpha,
            self.learnable,
            self.channel_axis,
            self.residual,
            self.mode,
            self.param_dtype,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Any) -> jax.Array:
        log_alpha = None
        if self.learnable:
            log_alpha = self.param(
                _layers.SNAKE_PARAM,
                lambda _: _layers.init_log_alpha(
                    _SNAKE, self.channels, float(self.alpha), self.param_dtype
                ),
            )
        return _layers.apply_snake(
            _SNAKE,
            x,
            log_alpha,
            alpha=float(self.alpha),
            channels=self.channels,
            channel_axis=self.channel_axis,
            residual=self.residual,
            mode=self.mode,
        )


def _elementwise(name: str, fn: Callable[..., jax.Array]) -> type[nn.Module]:
    """The linen layer of a parameterless activation, made from its function.

    Each option is a dataclass field with the function's default (positional where the
    function takes it positionally, keyword-only otherwise); ``__post_init__`` validates them
    as the function does, so a bad option fails where the layer is built, before ``init``;
    ``__call__(x)`` calls the function. The layer has no variables.
    """
    spec = _layers.Elementwise(fn, f"{__name__}.{name}")

    def __post_init__(self):
        spec.check(self._options())
        nn.Module.__post_init__(self)

    def _options(self):
        return {o: getattr(self, o) for o in spec.options}

    def __call__(self, x: Any) -> jax.Array:
        return spec(x, self._options())

    def body(ns: dict[str, Any]) -> None:
        annotations: dict[str, Any] = {}
        for p in spec.positional:
            annotations[p.name] = Any
            ns[p.name] = p.default
        annotations["_"] = dataclasses.KW_ONLY
        for p in spec.keyword_only:
            annotations[p.name] = Any
            ns[p.name] = p.default
        ns.update(
            __annotations__=annotations,
            __module__=__name__,
            __qualname__=name,
            __doc__=spec.doc("m.apply({}, x)"),
            __post_init__=__post_init__,
            _options=_options,
            __call__=__call__,
        )

    return types.new_class(name, (nn.Module,), {}, body)


# Each docstring below is for static readers (the API pages); the class's own __doc__ is
# built from its function's and lists the options.
XSin = _elementwise("XSin", _xsin.xsin)
"""The layer form of :func:`stable_layers.xsin`, with its options and defaults."""
LogSigmoid = _elementwise("LogSigmoid", _log_sigmoid.log_sigmoid)
"""The layer form of :func:`stable_layers.log_sigmoid`, with its options and defaults."""
SiLU = _elementwise("SiLU", _silu.silu)
"""The layer form of :func:`stable_layers.silu`, with its options and defaults."""
GELU = _elementwise("GELU", _gelu.gelu)
"""The layer form of :func:`stable_layers.gelu`, with its options and defaults."""
Mish = _elementwise("Mish", _mish.mish)
"""The layer form of :func:`stable_layers.mish`, with its options and defaults."""
ELU = _elementwise("ELU", _elu.elu)
"""The layer form of :func:`stable_layers.elu`, with its options and defaults."""
CELU = _elementwise("CELU", _elu.celu)
"""The layer form of :func:`stable_layers.celu`, with its options and defaults."""
SELU = _elementwise("SELU", _elu.selu)
"""The layer form of :func:`stable_layers.selu`, with its options and defaults."""
