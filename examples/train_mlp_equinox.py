"""Train an MLP with Equinox + optax and watch a naive softplus diverge in float16.

    python examples/train_mlp_equinox.py --activation all --dtype float16 --steps 150 --out out

Mixed precision: the parameters and Adam's state are float32; each step casts the parameters
and the inputs to ``--dtype`` for the forward and backward pass, and the loss is computed in
float32. In float16, ``exp`` overflows above 11.1, so the naive ``log1p(exp(x))`` returns inf
(and its gradient NaN) as soon as a pre-activation passes 11.1, a few steps into training.
Arguments, data, sharding, the loop and the reports live in ``_common.py``.
The same script trains across several processes or hosts (``jax.distributed``; see
examples/README.md, "Several processes, one host or many").
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from _common import HIDDEN, Dataset, Run, cross_entropy, main

from stable_layers.equinox import Softplus, XSin


def naive_softplus(x: jax.Array) -> jax.Array:
    # Deliberately naive: exp(x) overflows to inf for x > 11.1 in float16 (88.7 in float32),
    # and autodiff's gradient exp(x) / (1 + exp(x)) is then inf / inf = NaN.
    return jnp.log1p(jnp.exp(x))


def activation_layer(name: str) -> eqx.Module:
    if name == "naive":
        return eqx.nn.Lambda(naive_softplus)
    if name == "jax":
        return eqx.nn.Lambda(jax.nn.softplus)
    if name == "stable":
        return Softplus()
    if name == "xsin":
        return XSin()
    raise ValueError(f"unknown activation {name!r}")


def make_mlp(sizes: list[int], activation: str, key: jax.Array) -> eqx.nn.Sequential:
    """Linear layers (float32 parameters, Equinox's default init) with the activation between."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (n_in, n_out, k) in enumerate(zip(sizes[:-1], sizes[1:], keys, strict=True)):
        if i:
            layers.append(activation_layer(activation))
        layers.append(eqx.nn.Linear(n_in, n_out, key=k))
    return eqx.nn.Sequential(layers)


def make_run(activation: str, data: Dataset, args: argparse.Namespace) -> Run:
    dtype = args.compute_dtype
    sizes = [data.num_features, *HIDDEN, data.num_classes]
    model = make_mlp(sizes, activation, jax.random.key(args.seed))
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    def logits(model: eqx.nn.Sequential, x: jax.Array) -> jax.Array:
        # The casts are differentiable, so the gradients arrive in float32 for the update.
        model = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
        return jax.vmap(model)(x.astype(dtype))

    def loss_fn(model, x, y):
        return cross_entropy(logits(model, x), y)

    @eqx.filter_jit
    def train_step(state, x, y):
        model, opt_state = state
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), opt_state), loss

    @eqx.filter_jit
    def predict(state, x):
        return logits(state[0], x)

    def compile_step(state, x, y):
        # eqx.filter_jit's compiled wrapper keeps JAX's own Compiled in `.compiled`.
        return train_step.lower(state, x, y).compile().compiled

    return Run((model, opt_state), train_step, predict, compile_step)


if __name__ == "__main__":
    main("Equinox", make_run)
