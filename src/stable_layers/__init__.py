"""stable_layers: numerically stable, memory-aware activation kernels for JAX.

The functional kernels live here; the framework modules live in ``stable_layers.equinox``,
``stable_layers.linen`` and ``stable_layers.nnx`` and are imported only on request, so
``import stable_layers`` needs JAX alone.
"""

from ._activation import Activation as Activation
from ._activation import custom_activation as custom_activation
from ._elu import celu as celu
from ._elu import elu as elu
from ._elu import selu as selu
from ._gelu import gelu as gelu
from ._log_sigmoid import log_sigmoid as log_sigmoid
from ._mish import mish as mish
from ._silu import silu as silu
from ._snake import snake as snake
from ._softplus import softplus as softplus
from ._softplus import stable_log1pexp as stable_log1pexp
from ._softplus_inverse import softplus_inverse as softplus_inverse
from ._xsin import custom_vjp_with_extra_residual as custom_vjp_with_extra_residual
from ._xsin import xsin as xsin

__version__ = "0.2.0"

__all__ = [
    "Activation",
    "celu",
    "custom_activation",
    "custom_vjp_with_extra_residual",
    "elu",
    "gelu",
    "log_sigmoid",
    "mish",
    "selu",
    "silu",
    "snake",
    "softplus",
    "softplus_inverse",
    "stable_log1pexp",
    "xsin",
]
