"""Shared pytest set-up: float64 available for references, and a multi-device helper."""

import jax

# float64 references and float64 inputs need x64; float32 stays the default dtype for
# Python floats only where a test asks for it explicitly, so every test names its dtype.
jax.config.update("jax_enable_x64", True)
