"""Argument validation shared by the kernels and the framework modules.

Every error names the function, the argument, the value it got and the valid choices, so a
typo in a model definition fails at the line that made it rather than deep inside a trace.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("vjp", "jvp")


def check_choice(fn: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``choices``; raises ValueError naming them otherwise."""
    if not isinstance(value, str) or value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: {name} must be one of {valid}; got {value!r}.")
    return value


def is_static_number(value: Any) -> bool:
    """True for a Python or NumPy real scalar (not bool), i.e. a compile-time constant."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_tracer(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_beta(fn: str, beta: Any) -> float | jax.Array:
    """Validates ``beta``: a positive finite number (static) or a real array.

    Returns a Python float for a compile-time constant β and a floating JAX array otherwise.
    An array, concrete or traced, stays an array: the kernel traces it, so a new value never
    compiles again. A concrete array's values are checked here; under ``jit`` or ``grad`` an
    array's sign cannot be checked (the layers keep a learnable β positive by construction).
    """
    if isinstance(beta, bool):
        raise TypeError(f"{fn}: beta must be a positive number or a real array; got {beta!r}.")
    if is_static_number(beta):
        try:
            value = float(beta)
        except OverflowError:
            value = math.inf
        if not (value > 0 and math.isfinite(value)):
            shown = repr(beta) if len(repr(beta)) <= 40 else f"{value:.3g}"
            raise ValueError(f"{fn}: beta must be a positive finite number; got {shown}.")
        return value
    try:
        arr = jnp.asarray(beta)
    except TypeError as err:
        raise TypeError(
            f"{fn}: beta must be a positive number or a real array; got {type(beta).__name__}."
        ) from err
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: a beta array must have a floating dtype (float16, bfloat16, float32, "
            f"float64); got {arr.dtype}. Pass a Python number for a fixed beta."
        )
    if not _is_tracer(arr):
        # NumPy, not jnp: inside a jit trace, jnp ops on a closed-over constant are traced.
        values = np.asarray(arr, dtype=np.float64)
        if not np.all((values > 0) & np.isfinite(values)):
            raise ValueError(
                f"{fn}: beta must be positive and finite everywhere; got an array with "
                f"min {values.min()!r} and max {values.max()!r}."
            )
    return arr


def check_beta_range(fn: str, beta: float | jax.Array, dtype: Any) -> None:
    """β must be a normal, finite number in the compute dtype it is used in.

    ``beta=1e300`` passes ``check_beta`` but is ``inf`` in float32 (and ``1e-40`` flushes to 0),
    which would turn the output into NaN/inf. A traced array cannot be checked.
    """
    if _is_tracer(beta):
        return
    values = np.asarray(beta, dtype=np.float64)
    fi = jnp.finfo(dtype)
    if not np.all((float(fi.tiny) <= values) & (values <= float(fi.max))):
        shown = repr(beta) if isinstance(beta, float) else f"an array with min {values.min()!r}"
        raise ValueError(
            f"{fn}: beta={shown} is outside the range of the {jnp.dtype(dtype).name} "
            f"computation, [{float(fi.tiny):.3g}, {float(fi.max):.3g}]."
        )


def check_threshold(fn: str, threshold: Any) -> float | None:
    """Validates ``threshold``: None or a real, non-NaN number (a concrete 0-d array too)."""
    if threshold is None:
        return None
    if not is_static_number(threshold) and not _is_tracer(threshold):
        dtype = getattr(threshold, "dtype", None)  # a concrete scalar such as jnp.float32(20)
        real = dtype is not None and (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        )
        if real and jnp.ndim(threshold) == 0:
            threshold = float(threshold)
    if not is_static_number(threshold) or math.isnan(float(threshold)):
        raise ValueError(
            f"{fn}: threshold must be None or a real number; got {threshold!r}. It must be a "
            "compile-time constant (not a traced array) and not NaN."
        )
    return float(threshold)


@functools.cache
def _promoted_dtype(dtype: Any, x64: bool) -> Any:
    # Exactly jax.nn.softplus's promotion (which depends on jax_enable_x64).
    del x64  # part of the cache key only
    return jax.eval_shape(jax.nn.softplus, jax.ShapeDtypeStruct((), dtype)).dtype


def as_float_array(fn: str, x: Any, name: str = "x") -> jax.Array:
    """Converts ``x`` to a JAX array with a real floating dtype.

    Integers and booleans promote exactly like ``jax.nn.softplus`` (to the default float dtype:
    float32, or float64 with ``jax_enable_x64``); complex input raises TypeError.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(
            f"{fn}: {name} has dtype {x.dtype}, but {fn} is defined for real inputs only "
            "(float16, bfloat16, float32, float64, or integers, which promote to float)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
            raise TypeError(f"{fn}: {name} must be a real numeric array; got dtype {x.dtype}.")
        x = x.astype(_promoted_dtype(x.dtype, bool(jax.config.jax_enable_x64)))  # type: ignore[attr-defined]  # set at runtime
    return x


def compute_dtype(dtype: Any) -> Any:
    """The dtype a kernel computes in: float32 for half precision, the dtype itself otherwise.

    Half-precision inputs are upcast once and the result is rounded once, so the only error
    beyond float32's is the final rounding.
    """
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


# --------------------------------------------------------------------------------------
# Checks used by the framework layers (stable_layers.equinox / .linen / .nnx).
# --------------------------------------------------------------------------------------

FLOAT_DTYPE_CHOICES = "a floating dtype such as jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64"


def check_layer_beta(fn: str, beta: Any) -> float:
    """Validates a layer's ``beta``: a positive finite Python or NumPy number.

    A layer's β is a hyperparameter (the fixed β, or the initial β when ``learnable=True``),
    so unlike the kernel's ``beta`` it cannot be an array: a learnable β lives in the layer's
    parameter instead.
    """
    if not is_static_number(beta):
        raise TypeError(
            f"{fn}: beta must be a positive finite number (the fixed beta, or the initial beta "
            f"when learnable=True); got {beta!r}. For a trainable beta pass learnable=True."
        )
    return cast(float, check_beta(fn, beta))  # a static number comes back as a float


def check_bool(fn: str, name: str, value: Any) -> bool:
    """Returns ``value`` as a bool if it is True or False; raises TypeError otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False; got {value!r}.")
    return bool(value)


def check_float_dtype(fn: str, name: str, dtype: Any, *, allow_none: bool = False) -> Any:
    """Returns ``dtype`` if it names a floating dtype (or is None where allowed).

    Raises ValueError for anything else (an integer or complex dtype, a non-dtype), naming the
    argument, the value and the valid choices.
    """
    if dtype is None and allow_none:
        return None
    try:
        # np.dtype(None) is float64, so None is rejected explicitly.
        ok = dtype is not None and jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        choices = FLOAT_DTYPE_CHOICES + (", or None" if allow_none else "")
        raise ValueError(f"{fn}: {name} must be {choices}; got {dtype!r}.")
    return dtype
