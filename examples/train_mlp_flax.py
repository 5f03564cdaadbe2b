"""Train an MLP with Flax nnx + optax and watch a naive softplus diverge in float16.

    python examples/train_mlp_flax.py --activation all --dtype float16 --steps 150 --out out

Mixed precision the Flax way: every ``nnx.Linear`` keeps float32 parameters
(``param_dtype``) and computes in ``--dtype`` (``dtype``), Adam's state is float32, and the
loss is computed in float32. In float16, ``exp`` overflows above 11.1, so the naive
``log1p(exp(x))`` returns inf (and its gradient NaN) as soon as a pre-activation passes 11.1,
a few steps into training. Arguments, data, sharding, the loop and the reports live in
``_common.py``.
The same script trains across several processes or hosts (``jax.distributed``; see
examples/README.md, "Several processes, one host or many").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from _common import HIDDEN, Dataset, Run, cross_entropy, main
from flax import nnx

from stable_layers.nnx import Softplus, XSin


def naive_softplus(x: jax.Array) -> jax.Array:
    # Deliberately naive: exp(x) overflows to inf for x > 11.1 in float16 (88.7 in float32),
    # and autodiff's gradient exp(x) / (1 + exp(x)) is then inf / inf = NaN.
    return jnp.log1p(jnp.exp(x))


def activation_layer(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "naive":
        return naive_softplus
    if name == "jax":
        return jax.nn.softplus
    if name == "stable":
        return Softplus()
    if name == "xsin":
        return XSin()
    raise ValueError(f"unknown activation {name!r}")


def torch_style_uniform(fan_in: int) -> nnx.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): Equinox's (and PyTorch's) Linear init."""
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nnx.Module):
    def __init__(self, sizes: list[int], activation: str, dtype, *, rngs: nnx.Rngs):
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i:
                layers.append(activation_layer(activation))
            init = torch_style_uniform(n_in)
            layers.append(
                nnx.Linear(
                    n_in,
                    n_out,
                    dtype=dtype,  # compute dtype: inputs and parameters are cast to it
                    param_dtype=jnp.float32,  # stored (and updated) dtype
                    kernel_init=init,
                    bias_init=init,
                    rngs=rngs,
                )
            )
        self.layers = nnx.Sequential(*layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers(x)


def make_run(activation: str, data: Dataset, args: argparse.Namespace) -> Run:
    sizes = [data.num_features, *HIDDEN, data.num_classes]
    model = MLP(sizes, activation, args.compute_dtype, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    # Functional style (nnx.split / nnx.merge around jax.jit): the step returns new state and
    # leaves its input untouched, so the loop can discard an update whose loss is non-finite.
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    @jax.jit
    def predict(state, x):
        model, _ = nnx.merge(graphdef, state)
        return model(x)

    def compile_step(state, x, y):
        return train_step.lower(state, x, y).compile()

    return Run(state, train_step, predict, compile_step)


if __name__ == "__main__":
    main("Flax nnx", make_run)
