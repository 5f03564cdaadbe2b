"""How much bigger a batch fits, in Flax nnx: the same comparison as memory_budget.py.

    python examples/memory_budget_flax.py --activation all --dtype float32 --out out/budget_flax

The same model (residual MLP blocks ``x + W2·act(W1·LayerNorm(x))`` between an embedding
and a head), the same flags, search, training and reports as ``memory_budget.py``, which this
script imports; only the model is written in Flax nnx. Mixed precision the Flax way: every
layer keeps float32 parameters (``param_dtype``) and computes in ``--dtype`` (``dtype``).
The train step runs under ``jax.jit`` on the model's ``nnx.split`` state, so the compiled
executable, and so its memory, is a plain JAX one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
from flax import nnx
from memory_budget import main


class Block(nnx.Module):
    """``x + W2·act(W1·LayerNorm(x))``, a transformer's MLP block."""

    def __init__(self, width: int, hidden: int, act: Callable, dtype, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.up = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.down(self.act(self.up(self.norm(x))))


class Stack(nnx.Module):
    """``depth`` blocks whose parameters are stacked along a leading axis (``nnx.vmap`` over
    split rngs), applied in turn by ``nnx.scan``, or by a Python loop with ``unroll``."""

    def __init__(self, args: argparse.Namespace, act: Callable, *, rngs: nnx.Rngs):
        width, dtype = args.width, args.compute_dtype

        @nnx.split_rngs(splits=args.depth)
        @nnx.vmap(in_axes=0, out_axes=0)
        def blocks(rngs: nnx.Rngs) -> Block:
            return Block(width, width * args.expansion, act, dtype, rngs=rngs)

        self.blocks = blocks(rngs)
        self.depth = args.depth
        self.unroll = args.unroll

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.unroll:
            graphdef, params = nnx.split(self.blocks)
            for i in range(self.depth):
                x = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], params))(x)
            return x

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x: jax.Array, block: Block) -> jax.Array:
            return block(x)

        return run(x, self.blocks)


class Model(nnx.Module):
    """Embedding, ``--depth`` blocks, a final LayerNorm and the head."""

    def __init__(self, args: argparse.Namespace, act: Callable, *, rngs: nnx.Rngs):
        width, dtype, data = args.width, args.compute_dtype, args.data
        self.embed = nnx.Linear(data.num_features, width, dtype=dtype, rngs=rngs)
        self.blocks = Stack(args, act, rngs=rngs)
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(width, data.num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.norm(self.blocks(self.embed(x))))


def build_flax(act, args: argparse.Namespace):
    """The model's float32 parameters (an ``nnx.State``) and ``logits(params, x)``."""
    # The same seed for every activation: the same initial parameters.
    graphdef, params = nnx.split(Model(args, act, rngs=nnx.Rngs(args.seed)))

    def logits(params, x):
        return nnx.merge(graphdef, params)(x)

    return params, logits


if __name__ == "__main__":
    main(build=build_flax, framework="Flax nnx")
