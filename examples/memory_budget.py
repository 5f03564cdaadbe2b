"""How much bigger a batch fits: the largest batch whose train step fits a memory budget.

    python examples/memory_budget.py --activation all --dtype float32 --out out/budget

The model is a stack of transformer-style residual MLP blocks,
``x + W2·act(W1·LayerNorm(x))``, between a linear embedding of digits' 64 pixels and a
linear head over its 10 classes (Equinox, optax's Adam). For each activation the script finds
the largest batch whose compiled train step fits ``--budget-mib``, without running it: it
lowers and compiles the step for a candidate batch (``jax.ShapeDtypeStruct`` inputs, nothing is
allocated) and reads XLA's ``memory_analysis()``; a bisection over such compiles, each probe
placed by the secant through the last two (a step's bytes grow nearly linearly with the
batch), ends with a batch that fits and the next one that does not. Then it trains every
activation for ``--steps`` at one common batch, from the same initialisation and the same
batches, to show that the loss curves agree.

What counts as the step's memory: ``argument + output + temp - alias`` bytes of the compiled
step, per device. The arguments are the parameters, Adam's state and the batch; the outputs
the new parameters and state and the loss; temp is XLA's scratch space, mostly what the
forward pass keeps for the backward pass, which is what an activation's derivative rule
decides. The step does not donate its arguments (alias is then 0), as the shared training
loop keeps the previous state when a loss goes non-finite; a loop that donates its state
saves the state's size once, the same for every activation.

Arguments, data, the loop, the loss and the plot style come from ``_common.py``, shared with
the training examples.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import (
    DTYPES,
    Placement,
    Run,
    _positive_float,
    _positive_int,
    batch_order,
    cross_entropy,
    load_dataset,
    step_bytes,
    train,
)
from jax.scipy.special import erfc

import stable_layers as sl

# Sized so that `--activation all` (ten activations: five compiles each to find the largest
# batch, then 50 steps) takes under a minute on the project's 2-core CPU machine (53 s,
# `time python examples/memory_budget.py`, commit 94e82e7).
DEFAULT_WIDTH = 128
DEFAULT_DEPTH = 4
DEFAULT_EXPANSION = 4
DEFAULT_STEPS = 50
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3
# CPU has no device memory limit to read: a fixed budget, large enough that the parameters
# and Adam's state (6.5 MB at the default sizes, counted twice: in and out) are a small part
# of it, as a small model's are of an accelerator's memory, so the largest batches compare
# the activations' per-example memory. The batch does not change the compile time.
CPU_BUDGET_MIB = 256
# On GPU and TPU the default budget is the device's bytes_limit less this fraction: XLA's
# memory_analysis() leaves out what the runtime needs beside the executable (cuBLAS/cuDNN
# workspaces, fragmentation, other live arrays).
DEVICE_MARGIN = 0.10
# LLVM's optimisation level, which acts after XLA's buffer assignment: memory_analysis() is
# the same (checked at the defaults) and each search compile a fifth quicker, but the step runs
# up to 3.5x slower (the library's gelu), so the training batch compiles without it.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# On CPU the search's compiles (not the training batch's) also use XLA:CPU's legacy LLVM
# emitters instead of its default fusion emitters: they compile this step 2-3x quicker (0.4 s
# against 1.0 s at a batch of 1,001), and their bytes are the default's to within 0.1%
# (tests/test_memory_budget.py::test_cpu_emitters_keep_the_bytes), so a largest batch may be
# a few examples off the default program's: comparing both at every activation's float32
# answer (before commit fa28f8f) gave 0.01% to 0.05% more bytes, at most 6 examples. The
# trained step keeps the default emitters: the legacy ones ran the library's gelu 3x slower.
# An XLA that no longer knows the option compiles without it.
CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_UNKNOWN_OPTIONS: set[str] = set()
# The search's second probe is at most this many times the first scaled to the budget.
FAR = 16
# No batch is searched beyond this (int32 index arithmetic stays safe at the default width).
MAX_BATCH = 1 << 24


# --------------------------------------------------------------------------------------
# The activations.
# --------------------------------------------------------------------------------------


def _gelu_value(x):
    # Φ(x) = erfc(-x/√2)/2 keeps its relative accuracy for negative x, where 1 + erf(x/√2)
    # cancels.
    return 0.5 * x * erfc(-x / math.sqrt(2.0))


def _gelu_slope(x):
    return 0.5 * erfc(-x / math.sqrt(2.0)) + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu_slope(x):
    return jax.nn.sigmoid(x) * (1 + x * jax.nn.sigmoid(-x))


def library_activation(name: str) -> Callable[..., jax.Array]:
    """``stable_layers.gelu`` / ``.silu`` where the installed version has them, else the same
    function built with ``stable_layers.custom_activation`` (same rule machinery)."""
    if hasattr(sl, name):
        return getattr(sl, name)
    value, slope = {"gelu": (_gelu_value, _gelu_slope), "silu": (jax.nn.silu, _silu_slope)}[name]
    return sl.custom_activation(value, derivative=slope, name=f"memory_budget.{name}")


def _with_bits(name: str, bits: int) -> Callable[[jax.Array], jax.Array]:
    return functools.partial(library_activation(name), bits=bits)


# name -> (what it is, its jax.nn peer's name, a factory returning the activation)
ACTIVATIONS: dict[str, tuple[str, str, Callable[[], Callable[[jax.Array], jax.Array]]]] = {
    "jax-gelu": (
        "jax.nn.gelu(approximate=False)",
        "jax-gelu",
        lambda: functools.partial(jax.nn.gelu, approximate=False),
    ),
    "jax-silu": ("jax.nn.silu", "jax-silu", lambda: jax.nn.silu),
    "gelu": ("stable_layers.gelu", "jax-gelu", lambda: library_activation("gelu")),
    "silu": ("stable_layers.silu", "jax-silu", lambda: library_activation("silu")),
    "gelu-bits8": ("stable_layers.gelu(bits=8)", "jax-gelu", lambda: _with_bits("gelu", 8)),
    "gelu-bits4": ("stable_layers.gelu(bits=4)", "jax-gelu", lambda: _with_bits("gelu", 4)),
    "silu-bits8": ("stable_layers.silu(bits=8)", "jax-silu", lambda: _with_bits("silu", 8)),
    "silu-bits4": ("stable_layers.silu(bits=4)", "jax-silu", lambda: _with_bits("silu", 4)),
    "jax-softplus": ("jax.nn.softplus", "jax-softplus", lambda: jax.nn.softplus),
    "softplus": ("stable_layers.softplus", "jax-softplus", lambda: sl.softplus),
}


# --------------------------------------------------------------------------------------
# Arguments.
# --------------------------------------------------------------------------------------


def _activation_list(text: str) -> list[str]:
    if text == "all":
        return list(ACTIVATIONS)
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in ACTIVATIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown activation(s) {', '.join(map(repr, bad))}; choose from "
            f"{', '.join(ACTIVATIONS)}, comma-separated, or all"
        )
    return list(dict.fromkeys(names))  # in the order given, each once


def parse_args(argv: list[str] | None = None, framework: str = "Equinox") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"The largest batch whose {framework} train step fits a memory budget, per "
        "activation, then the same training at one common batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--activation",
        type=_activation_list,
        default="all",
        metavar="NAME[,NAME...]|all",
        help=f"one or more of {', '.join(ACTIVATIONS)}, comma-separated, or all",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="compute dtype of activations and matmuls; parameters and Adam's state stay float32",
    )
    parser.add_argument(
        "--budget-mib",
        type=_positive_float,
        default=None,
        metavar="N",
        help="the memory budget of one train step, in MiB; default: on GPU/TPU the device's "
        f"memory_stats()['bytes_limit'] less {DEVICE_MARGIN:.0%}, on CPU {CPU_BUDGET_MIB}",
    )
    parser.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS)
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help="the common training batch (lowered to the smallest largest batch if that is less)",
    )
    parser.add_argument("--width", type=_positive_int, default=DEFAULT_WIDTH)
    parser.add_argument("--depth", type=_positive_int, default=DEFAULT_DEPTH, help="blocks")
    parser.add_argument(
        "--unroll",
        action="store_true",
        help="apply the blocks in a Python loop rather than jax.lax.scan (compile time grows "
        "with --depth, and XLA may recompute residuals across blocks)",
    )
    parser.add_argument(
        "--expansion", type=_positive_int, default=DEFAULT_EXPANSION, help="W1 is width x this"
    )
    parser.add_argument("--lr", type=_positive_float, default=DEFAULT_LR, help="Adam step size")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="directory for metrics.json and budget.png"
    )
    args = parser.parse_args(argv)
    if isinstance(args.activation, str):  # the default is not passed through `type`
        args.activation = _activation_list(args.activation)
    args.activations = args.activation
    args.compute_dtype = DTYPES[args.dtype]
    args.data = load_dataset("digits")
    n = len(args.data.y)
    if args.batch_size > n:
        parser.error(f"--batch-size {args.batch_size} is larger than digits's {n} examples")
    return args


def layers(args: argparse.Namespace) -> str:
    return "Python loop" if args.unroll else "lax.scan"


def default_budget_bytes(device: jax.Device) -> tuple[int, str]:
    """The budget and where it came from: the device's own limit less a margin, or CPU's."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        limit = int(stats["bytes_limit"])
        return int(limit * (1 - DEVICE_MARGIN)), (
            f"{device.platform} bytes_limit {limit / 2**20:.0f} MiB less {DEVICE_MARGIN:.0%}"
        )
    return CPU_BUDGET_MIB * 2**20, "the fixed default for a device without a limit to read"


# --------------------------------------------------------------------------------------
# The model and its train step.
# --------------------------------------------------------------------------------------


class Rows(eqx.Module):
    """An Equinox layer (which maps one example) applied to every row of a batch."""

    layer: eqx.Module

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        return jax.vmap(self.layer)(x)


class Block(eqx.Module):
    """``x + W2·act(W1·LayerNorm(x))``, a transformer's MLP block, on a batch of rows."""

    norm: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear
    act: Callable[[jax.Array], jax.Array] = eqx.field(static=True)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        h = jax.vmap(lambda row: self.up(self.norm(row)))(x)
        # The activation sees the whole (batch, hidden) array, as in a transformer block's
        # (batch, sequence, hidden) one, rather than one row at a time under vmap: slope codes
        # (bits=) then take one range per call. Under vmap they take one per row, which today
        # costs more memory than it saves (examples/README.md, "How much bigger fits").
        return x + jax.vmap(self.down)(self.act(h))


class Stack(eqx.Module):
    """``depth`` blocks whose parameters are stacked along a leading axis, applied in turn by
    ``jax.lax.scan`` (compiled once, whatever the depth: the usual way to write a deep
    transformer in JAX), or by a Python loop with ``unroll``."""

    blocks: Block
    unroll: bool = eqx.field(static=True)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        params, static = eqx.partition(self.blocks, eqx.is_array)
        if self.unroll:
            depth = jax.tree.leaves(params)[0].shape[0]
            for i in range(depth):
                x = eqx.combine(jax.tree.map(lambda a, i=i: a[i], params), static)(x)
            return x
        return jax.lax.scan(lambda h, p: (eqx.combine(p, static)(h), None), x, params)[0]


def make_model(args: argparse.Namespace, act, key: jax.Array) -> eqx.nn.Sequential:
    """Embedding, ``--depth`` blocks, a final LayerNorm and the head (float32 parameters)."""
    width, hidden = args.width, args.width * args.expansion
    data = args.data
    k_embed, k_head, k_blocks = jax.random.split(key, 3)

    @eqx.filter_vmap
    def block(k: jax.Array) -> Block:
        k1, k2 = jax.random.split(k)
        up, down = eqx.nn.Linear(width, hidden, key=k1), eqx.nn.Linear(hidden, width, key=k2)
        return Block(eqx.nn.LayerNorm(width), up, down, act)

    return eqx.nn.Sequential(
        [
            Rows(eqx.nn.Linear(data.num_features, width, key=k_embed)),
            Stack(block(jax.random.split(k_blocks, args.depth)), args.unroll),
            Rows(eqx.nn.LayerNorm(width)),
            Rows(eqx.nn.Linear(width, data.num_classes, key=k_head)),
        ]
    )


Build = Callable[
    [Callable[[jax.Array], jax.Array], argparse.Namespace],
    tuple[object, Callable[[object, jax.Array], jax.Array]],
]


def build_equinox(act, args: argparse.Namespace):
    """The model's float32 parameters (a pytree) and ``logits(params, x)``."""
    # The same key for every activation: the same initial parameters.
    model = make_model(args, act, jax.random.key(args.seed))
    params, static = eqx.partition(model, eqx.is_array)
    dtype = args.compute_dtype

    def logits(params, x):
        # Mixed precision: float32 parameters cast (differentiably) to the compute dtype.
        cast = jax.tree.map(lambda a: a.astype(dtype), params)
        return eqx.combine(cast, static)(x.astype(dtype))

    return params, logits


class Step:
    """One activation's train step, with a compile per batch size (each kept for reuse).

    ``build(act, args)`` returns the model's parameters and ``logits(params, x)``: the one
    part that depends on the framework.
    """

    def __init__(self, activation: str, args: argparse.Namespace, keep: int, build: Build):
        params, logits = build(ACTIVATIONS[activation][2](), args)
        optimizer = optax.adam(args.lr)

        def step(state, x, y):
            params, opt_state = state
            loss, grads = jax.value_and_grad(lambda p: cross_entropy(logits(p, x), y))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        self.state = (params, optimizer.init(params))
        self.jitted = jax.jit(step)
        predict = jax.jit(logits)

        def quick_predict(state, x):
            # Runs once, for the training accuracy: compiled as quickly as the search's probes.
            options = dict(COMPILER_OPTIONS)
            if jax.default_backend() == "cpu":
                options.update(CPU_OPTIONS)
            return compile_with(predict.lower(state[0], x), options)(state[0], x)

        self.predict = quick_predict
        self.num_features = args.data.num_features
        self.compiled: dict[int, jax.stages.Compiled] = {}
        self.bytes: dict[int, int] = {}
        self.keep = keep  # the training batch, whose executable the loop reuses

    def compile(self, batch: int) -> jax.stages.Compiled:
        """The step compiled for ``batch``: at the training batch as for any run (it is
        trained with), elsewhere with :data:`COMPILER_OPTIONS` (and on CPU
        :data:`CPU_OPTIONS`).

        Each batch is traced again (about 0.3 s of the 1-2 s a probe takes on this project's
        CPU). Tracing once with a symbolic batch (``jax.export``) and lowering that for each
        batch would save it, but XLA then plans another program: under ``lax.scan`` its bytes
        differed from the step's by up to 13% (``silu(bits=4)`` at a batch of 8,001).
        """
        if batch not in self.compiled:
            x = jax.ShapeDtypeStruct((batch, self.num_features), jnp.float32)
            y = jax.ShapeDtypeStruct((batch,), jnp.int32)
            lowered = self.jitted.lower(self.state, x, y)
            options = {}
            if batch != self.keep:
                options.update(COMPILER_OPTIONS)
                if jax.default_backend() == "cpu":
                    options.update(CPU_OPTIONS)
            self.compiled[batch] = compile_with(lowered, options)
        return self.compiled[batch]

    def step_bytes(self, batch: int) -> int:
        """The compiled step's ``argument + output + temp - alias`` bytes at ``batch``."""
        if batch not in self.bytes:
            found = step_bytes(self.compile(batch))
            if found is None:
                raise SystemExit(
                    f"memory_budget: the {jax.default_backend()} backend reports no "
                    "memory_analysis() for a compiled step, so no batch can be sized"
                )
            self.bytes[batch] = found
            # Only the executable at the training batch is needed later.
            self.compiled = {b: c for b, c in self.compiled.items() if b == self.keep}
        return self.bytes[batch]

    def run(self, batch: int) -> Run:
        """The shared loop's view of this step, compiled once for the training batch."""
        compiled = self.compile(batch)
        return Run(
            state=self.state,
            train_step=compiled,
            predict=self.predict,
            compile_step=lambda state, x, y: compiled,
        )


def compile_with(lowered: jax.stages.Lowered, options: dict) -> jax.stages.Compiled:
    """``lowered.compile(options)``, leaving out the :data:`CPU_OPTIONS` the installed XLA
    does not know (it rejects them by name)."""
    options = {k: v for k, v in options.items() if k not in _UNKNOWN_OPTIONS}
    try:
        return lowered.compile(options or None)
    except Exception as error:  # jax's XlaRuntimeError, which newer jax renames
        unknown = [k for k in options if k in CPU_OPTIONS and repr(k) in str(error)]
        if "No such compile option" not in str(error) or not unknown:
            raise
        _UNKNOWN_OPTIONS.update(unknown)
        return compile_with(lowered, options)


def largest_batch(
    bytes_at: Callable[[int], int], budget: int, start: int, fixed: int = 0
) -> tuple[int, int]:
    """The largest batch ``n`` with ``bytes_at(n) <= budget``, and how many batches it tried.

    A bisection over compiles: ``lo`` fits (0 trivially), ``hi`` does not, and the bracket
    shrinks until ``hi == lo + 1``. Each probe is placed by the secant through the last two
    batches tried (a step's bytes grow nearly linearly with the batch, with a few kinks where
    XLA changes its plan, so the two most recent probes, the nearest the answer, give the
    best local slope), kept strictly inside the bracket. The second probe scales ``start``'s
    bytes above ``fixed`` (what does not grow with the batch: the parameters and the optimizer
    state, in and out) to the budget, at most :data:`FAR` times ``start``'s whole bytes
    scaled. At the defaults it lands far past the answer (small batches need less per
    example), so the secant through the two has nearly the slope of large batches: 5 compiles
    an activation where scaling the whole bytes took 6. Where a probe has not halved the
    bracket of two probes before, the next is the bracket's midpoint, which bounds the count
    by twice a plain bisection's (over a bracket up to ``FAR`` times wider with ``fixed``).
    Assumes ``bytes_at`` does not decrease as the batch grows.
    """
    seen: dict[int, int] = {}
    order: list[int] = []
    widths: list[float] = []  # the bracket's width after each probe (inf while unbounded)
    lo, hi = 0, None
    n = start
    while True:
        seen[n] = bytes_at(n)
        order.append(n)
        if seen[n] <= budget:
            lo = n
        else:
            hi = n
        if (hi is not None and hi - lo <= 1) or lo == MAX_BATCH:
            return lo, len(seen)
        widths.append(math.inf if hi is None else hi - lo)
        if len(order) == 1:
            scaled = n * budget / seen[n]
            fixed = min(fixed, seen[n] - 1)
            n = int(min(n * (budget - fixed) / (seen[n] - fixed), FAR * scaled))
        elif hi is not None and len(widths) >= 3 and widths[-1] > widths[-3] / 2:
            n = (lo + hi) // 2
        else:
            a, b = order[-2], order[-1]
            slope = (seen[b] - seen[a]) / (b - a)
            if slope > 0:
                n = b + math.floor((budget - seen[b]) / slope)
            else:  # a flat stretch: no slope to follow
                n = 2 * lo if hi is None else (lo + hi) // 2
        upper = MAX_BATCH if hi is None else hi - 1
        n = min(max(n, lo + 1), upper)
        if n in seen:  # the secant repeats a probe: bisect instead
            n = (lo + (upper + 1)) // 2 if hi is not None else 2 * lo
            n = min(max(n, lo + 1), upper)


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


def with_ratios(runs: list[dict]) -> list[dict]:
    """Each run's largest batch over its jax.nn peer's (None where the peer was not run)."""
    by = {r["activation"]: r for r in runs}
    out = []
    for r in runs:
        peer = by.get(ACTIVATIONS[r["activation"]][1])
        ratio = None
        if peer is not None and peer["largest_batch"] > 0:
            ratio = r["largest_batch"] / peer["largest_batch"]
        out.append({**r, "ratio": ratio, "peer": None if peer is None else peer["activation"]})
    return out


def max_loss_gap(run: dict, peer: dict | None) -> float | None:
    """The largest relative difference between a run's losses and its peer's, step by step."""
    if peer is None:
        return None
    pairs = [(a, b) for a, b in zip(run["losses"], peer["losses"]) if a is not None and b]
    return max((abs(a - b) / abs(b) for a, b in pairs), default=None)


def summary_table(runs: list[dict]) -> str:
    by = {r["activation"]: r for r in runs}
    lines = [
        f"{'activation':<13} {'largest batch':>13} {'bytes/example':>13} {'x jax.nn':>8} "
        f"{'final loss':>10} {'max loss gap':>12}"
    ]
    for r in with_ratios(runs):
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        final = r["losses"][-1]
        gap = max_loss_gap(r, by.get(r["peer"])) if r["peer"] != r["activation"] else None
        lines.append(
            f"{r['activation']:<13} {r['largest_batch']:>13,} {r['bytes_per_example']:>13,.0f} "
            f"{ratio:>8} {'-' if final is None else format(final, '.4f'):>10} "
            f"{'-' if gap is None else format(gap, '.1%'):>12}"
        )
    return "\n".join(lines)


def plot(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = with_ratios(metrics["runs"])
    families = sorted({ACTIVATIONS[r["activation"]][1] for r in runs})
    color = {f: f"C{i}" for i, f in enumerate(families)}
    fig, (bars, curves) = plt.subplots(
        1, 2, figsize=(11, 4.2), layout="constrained", width_ratios=(1, 1.15)
    )
    names = [r["activation"] for r in runs]
    values = [r["largest_batch"] for r in runs]
    colors = [color[ACTIVATIONS[n][1]] for n in names]
    hatches = ["" if n.startswith("jax-") else "//" for n in names]
    ypos = np.arange(len(runs))[::-1]
    drawn = bars.barh(ypos, values, color=colors, edgecolor="black", lw=0.6)
    for patch, hatch in zip(drawn, hatches, strict=True):
        patch.set_hatch(hatch)
    for y, r in zip(ypos, runs, strict=True):
        label = f" {r['largest_batch']:,}"
        if r["ratio"] is not None and r["peer"] != r["activation"]:
            label += f"  ({r['ratio']:.2f}x)"
        bars.text(r["largest_batch"], y, label, va="center", fontsize=8)
    bars.set_yticks(ypos, names, fontsize=9)
    bars.set_xlabel(f"largest batch within {metrics['budget_bytes'] / 2**20:.0f} MiB")
    bars.set_xlim(0, max(values) * 1.3 if values else 1)
    bars.set_title("largest batch that fits (hatched: stable_layers)", fontsize=10)
    bars.grid(True, axis="x", alpha=0.3)

    for i, r in enumerate(runs):
        steps = [s for s, v in enumerate(r["losses"], 1) if v is not None]
        vals = [v for v in r["losses"] if v is not None]
        style = "-" if r["activation"].startswith("jax-") else "--"
        curves.plot(
            steps,
            vals,
            style,
            color=color[ACTIVATIONS[r["activation"]][1]],
            lw=2.4 if style == "-" else 1.2,
            label=r["activation"],
        )
    curves.set_yscale("log")
    curves.set_xlabel(f"step (batch {metrics['batch_size']}, same initialisation and batches)")
    curves.set_ylabel("training loss (cross-entropy)")
    curves.set_title("the same training", fontsize=10)
    curves.grid(True, which="both", alpha=0.3)
    curves.legend(fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


def main(
    argv: list[str] | None = None, build: Build = build_equinox, framework: str = "Equinox"
) -> dict:
    args = parse_args(argv, framework)
    start = time.perf_counter()
    device = jax.devices()[0]
    print(f"backend: {jax.default_backend()}, device: {device}")
    if args.budget_mib is None:
        budget, source = default_budget_bytes(device)
    else:
        budget, source = int(args.budget_mib * 2**20), "--budget-mib"
    print(f"budget: {budget / 2**20:.1f} MiB ({source})")
    data = args.data
    print(
        f"model: {data.num_features} -> {args.width} -> {args.depth} x [x + W2 act(W1 "
        f"LayerNorm(x)), hidden {args.width * args.expansion}] ({layers(args)}) -> "
        f"{data.num_classes}, compute "
        f"{args.dtype}, Adam lr {args.lr}; step memory = argument + output + temp - alias "
        "bytes of the compiled step"
    )

    def search(name: str) -> tuple[Step, dict]:
        step = Step(name, args, keep=args.batch_size, build=build)
        # The parameters and Adam's state are arguments and outputs at every batch.
        fixed = 2 * sum(leaf.nbytes for leaf in jax.tree.leaves(step.state))
        n, tried = largest_batch(step.step_bytes, budget, args.batch_size, fixed)
        if n == 0:
            raise SystemExit(
                f"memory_budget: --budget-mib {budget / 2**20:g} does not fit a batch of 1 "
                f"with {name} ({step.bytes[1] / 2**20:.1f} MiB); give a larger budget"
            )
        # Bytes per example: what one more example costs at the budget, bytes(n + 1) - bytes(n)
        # (both compiled by the search); at the search's cap, the slope from the batch below.
        b = step.bytes
        a = max(k for k in b if k < n) if n + 1 not in b else n
        slope = (b[n + 1] - b[n]) if n + 1 in b else (b[n] - b[a]) / (n - a)
        return step, {"largest_batch": n, "bytes_per_example": slope, "compiles": tried}

    # XLA compiles and runs outside the GIL: one activation per core at a time.
    workers = max(1, min(len(args.activations), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(args.activations, pool.map(search, args.activations), strict=True))
    steps = {name: step for name, (step, _) in results.items()}
    found = {name: f for name, (_, f) in results.items()}
    compiles = sum(f["compiles"] for f in found.values())
    print(f"searched in {time.perf_counter() - start:.1f}s ({compiles} compiles)")
    for name, f in found.items():
        n, b = f["largest_batch"], steps[name].bytes
        print(
            f"{name:>13}: largest batch {n:,} ({b[n] / 2**20:.2f} MiB; "
            f"{b.get(n + 1, 0) / 2**20:.2f} MiB at {n + 1:,}), {f['compiles']} compiles"
        )

    batch = min([args.batch_size, *(f["largest_batch"] for f in found.values())])
    if batch < args.batch_size:
        print(f"training batch lowered to {batch}, the smallest largest batch")
    order = batch_order(len(data.y), batch, args.steps, args.seed)
    place = Placement(data_parallel=False)

    def fit(name: str) -> dict:
        # Progress bars only when one activation trains at a time; side by side, a line each.
        trained = train(name, steps[name].run(batch), args, order, place, progress=workers == 1)
        if workers > 1:
            loss, stop = trained["final_loss"], trained["first_nonfinite_step"]
            end = f"final loss {loss:.4g}" if stop is None else f"non-finite loss at step {stop}"
            print(f"{name:>13} trained: {args.steps} steps, {end}", flush=True)
        return trained

    with ThreadPoolExecutor(max_workers=workers) as pool:
        trained = dict(zip(args.activations, pool.map(fit, args.activations), strict=True))
    runs = [
        {
            "activation": name,
            "largest_batch": found[name]["largest_batch"],
            "bytes_per_example": found[name]["bytes_per_example"],
            "losses": trained[name]["losses"],
            "step_bytes": steps[name].bytes[found[name]["largest_batch"]],
            "compiles": found[name]["compiles"],
            "train_accuracy": trained[name]["train_accuracy"],
        }
        for name in args.activations
    ]

    metrics = {
        "budget_bytes": budget,
        "dtype": args.dtype,
        "backend": jax.default_backend(),
        "batch_size": batch,
        "steps": args.steps,
        "model": {
            "width": args.width,
            "depth": args.depth,
            "expansion": args.expansion,
            "layers": layers(args),
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    title = (
        f"{framework}, {args.depth} residual MLP blocks ({layers(args)}; width {args.width}, "
        f"hidden {args.width * args.expansion}), {args.dtype}, {jax.default_backend()}"
    )
    plot(metrics, args.out / "budget.png", title)
    print(summary_table(runs))
    print(
        f"wrote {args.out / 'metrics.json'} and {args.out / 'budget.png'} "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return metrics


if __name__ == "__main__":
    main()
