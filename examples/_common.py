"""What the two training examples share: arguments, data, sharding, the loop, metrics, plot.

Each example script defines only its framework's model and train step (``make_run``) and
hands it to :func:`main`. Nothing here knows about Equinox or Flax.

What a run records once its loss goes non-finite: training that run stops at the first
non-finite loss and that step's update is discarded (a NaN gradient would turn every parameter
and Adam moment into NaN, so every later loss would be NaN too). ``losses`` still has one entry
per requested step: the finite losses, then ``null`` from the first non-finite step on (JSON
has no NaN or inf). ``train_accuracy`` is measured with the last finite parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

ACTIVATIONS = ("naive", "jax", "stable", "xsin")
DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}

# Defaults chosen (and measured, see examples/README.md) so that on digits in float16 the
# naive softplus diverges within a few steps while `stable` and `jax` pass 90% train accuracy
# within 150 steps.
DEFAULT_LR = 5e-3
DEFAULT_BATCH = 128
DEFAULT_STEPS = 150
HIDDEN = (256, 256)


# --------------------------------------------------------------------------------------
# Data: datasets bundled with scikit-learn, so nothing is downloaded at run time.
# --------------------------------------------------------------------------------------


def _load_digits():
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


def _load_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def _load_wine():
    from sklearn.datasets import load_wine

    return load_wine(return_X_y=True)


DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _load_digits,  # 1797 × 64 (8×8 images), 10 classes
    "breast_cancer": _load_breast_cancer,  # 569 × 30, 2 classes
    "wine": _load_wine,  # 178 × 13, 3 classes
}


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray  # (n, features) float32, each feature standardised over the data set
    y: np.ndarray  # (n,) int32 class labels
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.x.shape[1]


def load_dataset(name: str) -> Dataset:
    x, y = DATASETS[name]()
    x = np.asarray(x, np.float64)
    std = x.std(axis=0)
    # Constant features (digits' always-blank corner pixels) have std 0: centre them only.
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return Dataset(name, x.astype(np.float32), np.asarray(y, np.int32), int(y.max()) + 1)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch_size) example indices: shuffled epochs, the ragged last batch dropped.

    Computed once per invocation so that every activation sees the same batches in order.
    """
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    idx = [rng.permutation(n)[: per_epoch * batch_size] for _ in range(epochs)]
    return np.concatenate(idx).reshape(-1, batch_size)[:steps]


# --------------------------------------------------------------------------------------
# Arguments.
# --------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--activation",
        choices=(*ACTIVATIONS, "all"),
        default="all",
        help="naive: autodiff of log1p(exp(x)); jax: jax.nn.softplus; stable: the "
        "stable_layers Softplus layer; xsin: the stable_layers XSin layer; all: each in turn, "
        "from the same initialisation and data order",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float16",
        help="compute dtype of activations and matmuls; parameters and optimizer state stay "
        "float32",
    )
    parser.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS)
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help="global batch size; with --data-parallel it must divide by the device count",
    )
    parser.add_argument("--lr", type=_positive_float, default=DEFAULT_LR, help="Adam step size")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="digits")
    parser.add_argument(
        "--out", type=Path, default=Path("out"), help="directory for metrics.json and loss.png"
    )
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help="shard each batch over a mesh of all local devices; parameters replicated",
    )
    args = parser.parse_args(argv)

    args.data = load_dataset(args.dataset)
    n = len(args.data.y)
    if args.batch_size > n:
        parser.error(f"--batch-size {args.batch_size} is larger than {args.dataset}'s {n} examples")
    if args.data_parallel and args.batch_size % jax.local_device_count():
        parser.error(
            f"--batch-size {args.batch_size} must divide by the {jax.local_device_count()} "
            "local devices with --data-parallel"
        )
    args.activations = list(ACTIVATIONS) if args.activation == "all" else [args.activation]
    args.compute_dtype = DTYPES[args.dtype]
    return args


# --------------------------------------------------------------------------------------
# Placement: one device, or a data-parallel mesh over all local devices.
# --------------------------------------------------------------------------------------


class Placement:
    """Puts batches and state where the train step expects them.

    Without a mesh everything stays on JAX's default device. With one (``--data-parallel``),
    a batch is split along its first axis over the ``"data"`` mesh axis and parameters and
    optimizer state are replicated; ``jax.jit`` then compiles the step for that layout and
    inserts the gradient all-reduce itself. The same code runs on CPU, GPU or TPU devices.
    """

    def __init__(self, data_parallel: bool):
        self.mesh = Mesh(np.array(jax.local_devices()), ("data",)) if data_parallel else None

    def _put(self, tree: Any, spec: PartitionSpec) -> Any:
        if self.mesh is None:
            return jax.tree.map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, tree)
        sharding = NamedSharding(self.mesh, spec)
        return jax.tree.map(
            lambda a: jax.device_put(a, sharding) if isinstance(a, np.ndarray | jax.Array) else a,
            tree,
        )

    def batch(self, tree: Any) -> Any:
        return self._put(tree, PartitionSpec("data"))

    def replicate(self, tree: Any) -> Any:
        return self._put(tree, PartitionSpec())


# --------------------------------------------------------------------------------------
# The loop, shared by both frameworks.
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a script's ``make_run`` returns for one activation.

    ``state`` is any pytree (model and optimizer state); ``train_step(state, x, y)`` returns
    ``(new_state, loss)`` without mutating ``state``; ``predict(state, x)`` returns logits.
    """

    state: Any
    train_step: Callable[[Any, jax.Array, jax.Array], tuple[Any, jax.Array]]
    predict: Callable[[Any, jax.Array], jax.Array]


def train(
    activation: str, run: Run, args: argparse.Namespace, order: np.ndarray, place: Placement
) -> dict:
    """Runs ``args.steps`` steps over the batches in ``order``; returns the run's metrics entry.

    Stops at the first non-finite loss and keeps the parameters from before it (see the module
    docstring for what is recorded then).
    """
    data: Dataset = args.data
    state = place.replicate(run.state)
    losses: list[float | None] = []
    first_nonfinite = None
    bar = tqdm(range(1, args.steps + 1), desc=f"{activation:>6} {args.dtype}", unit="step")
    for step in bar:
        x, y = place.batch((data.x[order[step - 1]], data.y[order[step - 1]]))
        new_state, loss = run.train_step(state, x, y)
        loss = float(loss)
        if not math.isfinite(loss):
            first_nonfinite = step
            # tqdm's iterator updates its count lazily; show the step it stopped at.
            bar.n = step
            bar.set_postfix(loss=loss)
            bar.close()
            tqdm.write(
                f"{activation}: non-finite loss ({loss}) at step {step}; run stopped, "
                "update discarded, continuing with the next activation"
            )
            break
        state = new_state
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
    losses += [None] * (args.steps - len(losses))

    logits = run.predict(state, place.replicate(data.x))
    logits = np.asarray(logits, np.float32)
    # A prediction from non-finite logits counts as wrong, whatever argmax makes of it.
    correct = (logits.argmax(axis=1) == data.y) & np.isfinite(logits).all(axis=1)
    return {
        "activation": activation,
        "dtype": args.dtype,
        "steps": args.steps,
        "losses": losses,
        "first_nonfinite_step": first_nonfinite,
        "final_loss": losses[-1],
        "train_accuracy": float(correct.mean()),
    }


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy, with the softmax in float32 whatever the compute dtype."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------


def plot_losses(metrics: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    runs = metrics["runs"]
    for i, run in enumerate(runs):
        color = f"C{i}"
        steps = [s for s, v in enumerate(run["losses"], 1) if v is not None]
        values = [v for v in run["losses"] if v is not None]
        label = run["activation"]
        bad = run["first_nonfinite_step"]
        if bad is not None:
            label += f" (non-finite at step {bad})"
        # Curves that coincide (naive, jax and stable until naive overflows) stay visible:
        # the ones drawn first are drawn wider.
        ax.plot(steps, values, color=color, lw=1.2 + 1.2 * (len(runs) - 1 - i), label=label)
        if bad is not None:
            ax.axvline(bad, color=color, ls="--", lw=1)
            if values:  # the cross sits on the last finite loss
                ax.plot([bad], [values[-1]], "X", color=color, ms=11, mec="black", zorder=5)
                where, coords = (bad, values[-1]), "data"
            else:  # non-finite from step 1: no curve to mark, label the line at the top
                where, coords = (bad, 0.9), ("data", "axes fraction")
            ax.annotate(
                f"{run['activation']}: loss non-finite",
                where,
                xycoords=coords,
                xytext=(8, 8),
                textcoords="offset points",
                color=color,
                fontsize=9,
            )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(runs: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        f"{'activation':<10} {'dtype':<8} {'steps':>5} {'non-finite at':>13} "
        f"{'final loss':>10} {'train acc':>9}"
    ]
    for r in runs:
        lines.append(
            f"{r['activation']:<10} {r['dtype']:<8} {r['steps']:>5} "
            f"{fmt(r['first_nonfinite_step'], 'd'):>13} {fmt(r['final_loss'], '.4g'):>10} "
            f"{r['train_accuracy']:>9.3f}"
        )
    return "\n".join(lines)


def main(
    framework: str,
    make_run: Callable[[str, Dataset, argparse.Namespace], Run],
    argv: list[str] | None = None,
) -> None:
    args = parse_args(f"Train an MLP with {framework} + optax, comparing activations.", argv)
    devices = jax.local_devices()
    print(f"backend: {jax.default_backend()}, {len(devices)} device(s): {devices}")
    place = Placement(args.data_parallel)
    if place.mesh is not None:
        print(
            f"data parallel: each batch sharded over mesh {dict(place.mesh.shape)}, "
            "parameters and optimizer state replicated"
        )
    data = args.data
    print(
        f"dataset: {data.name} ({len(data.y)} examples, {data.num_features} features, "
        f"{data.num_classes} classes); MLP {data.num_features}-"
        f"{'-'.join(map(str, HIDDEN))}-{data.num_classes}, compute {args.dtype}, "
        f"Adam lr {args.lr}, batch {args.batch_size}, {args.steps} steps"
    )
    order = batch_order(len(data.y), args.batch_size, args.steps, args.seed)

    runs = []
    start = time.perf_counter()
    for activation in args.activations:
        runs.append(train(activation, make_run(activation, data, args), args, order, place))

    metrics = {
        "backend": jax.default_backend(),
        # The devices the runs used: all local devices with --data-parallel, otherwise one.
        "device_count": len(devices) if place.mesh is not None else 1,
        "dataset": data.name,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    title = f"{framework}: MLP on {data.name}, compute {args.dtype}, Adam lr {args.lr}"
    plot_losses(metrics, args.out / "loss.png", title)

    print(summary_table(runs))
    for r in runs:
        if r["first_nonfinite_step"] is not None:
            print(
                f"diverged: {r['activation']} (non-finite loss at step {r['first_nonfinite_step']})"
            )
    print(
        f"wrote {args.out / 'metrics.json'} and {args.out / 'loss.png'} "
        f"in {time.perf_counter() - start:.1f}s"
    )
