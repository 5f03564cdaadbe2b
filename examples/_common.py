"""What the two training examples share: arguments, data, sharding, the loop, metrics, plot.

Each example script defines only its framework's model and train step (``make_run``) and
hands it to :func:`main`. Nothing here knows about Equinox or Flax.

Multi-process runs (``jax.distributed``): every process runs the same script with the same
arguments plus its own ``--process-id`` (or ``--distributed`` under a cluster manager). Each
process computes the same batch order, builds only its own rows of every global batch, and
takes part in the same jitted steps; only process 0 prints and writes files.

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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _host_port(text: str) -> str:
    """``HOST:PORT`` as jax.distributed expects it; an IPv6 host goes in brackets."""
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with PORT in 1..65535 (e.g. 10.0.0.1:1234), got {text!r}"
        )
    return text


# The three flags that start an explicit multi-process run; they go together.
_TRIO = ("--coordinator-address", "--num-processes", "--process-id")


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
        help="shard each batch over a mesh of every device of every process; parameters "
        "replicated (implied by a multi-process run)",
    )
    multi = parser.add_argument_group(
        "multi-process (jax.distributed)",
        "Run the same command in every process, each with its own --process-id; or, under "
        "SLURM, Open MPI or on a Cloud TPU slice, with --distributed. Either implies "
        "--data-parallel. Only process 0 prints and writes files.",
    )
    multi.add_argument(
        "--coordinator-address",
        type=_host_port,
        metavar="HOST:PORT",
        help="process 0's host and a free port on it, the same in every process",
    )
    multi.add_argument(
        "--num-processes", type=_positive_int, metavar="N", help="how many processes take part"
    )
    multi.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="this process, in [0, N)"
    )
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() without arguments, which reads them from the "
        "cluster manager (SLURM, Open MPI, Cloud TPU); not with the three flags above",
    )
    args = parser.parse_args(argv)

    given = [
        flag
        for flag, value in zip(
            _TRIO, (args.coordinator_address, args.num_processes, args.process_id), strict=True
        )
        if value is not None
    ]
    if given and args.distributed:
        parser.error(
            f"argument --distributed: not allowed with {', '.join(given)} (--distributed "
            f"auto-detects what {', '.join(_TRIO)} give explicitly: use one or the other)"
        )
    if given and len(given) < len(_TRIO):
        missing = [flag for flag in _TRIO if flag not in given]
        parser.error(
            f"{' and '.join(given)} given without {' and '.join(missing)}: "
            f"{', '.join(_TRIO)} go together"
        )
    if given and args.process_id >= args.num_processes:
        parser.error(
            f"argument --process-id: {args.process_id} is not in [0, {args.num_processes}) "
            f"for --num-processes {args.num_processes}"
        )
    args.multi_process = bool(given) or args.distributed

    args.data = load_dataset(args.dataset)
    n = len(args.data.y)
    if args.batch_size > n:
        parser.error(f"--batch-size {args.batch_size} is larger than {args.dataset}'s {n} examples")
    if args.multi_process:
        # Before the device count below, which is the first JAX call that starts a backend.
        _initialize_distributed(args, parser)
        # Several processes training separate copies on the same batches would only repeat
        # one another's work: a multi-process run is a data-parallel run.
        args.data_parallel = True
    if args.data_parallel and args.batch_size % jax.device_count():
        parser.error(
            f"--batch-size {args.batch_size} must divide by the {jax.device_count()} "
            f"devices of {jax.process_count()} process(es) with --data-parallel"
        )
    args.activations = list(ACTIVATIONS) if args.activation == "all" else [args.activation]
    args.compute_dtype = DTYPES[args.dtype]
    return args


def _initialize_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Joins the multi-controller runtime; must come before any JAX call that starts a backend.

    On CPU the cross-process collectives (the gradient all-reduce) go through gloo. jax 0.10
    already defaults ``jax_cpu_collectives_implementation`` to gloo, but the setting is read
    from the environment too and older releases defaulted to none, so it is set explicitly;
    it only affects the CPU backend (GPUs use NCCL, TPUs their own interconnect).
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        # Without arguments (--distributed) JAX reads them from the cluster manager.
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except ValueError as e:
        if not args.distributed:
            raise
        # What initialize() says when no supported cluster environment was detected.
        parser.error(
            f"argument --distributed: jax.distributed.initialize() found no cluster to "
            f"auto-detect ({e}); outside SLURM, Open MPI or a Cloud TPU slice give "
            f"{', '.join(_TRIO)}"
        )


# --------------------------------------------------------------------------------------
# Placement: one device, or a data-parallel mesh over every device of every process.
# --------------------------------------------------------------------------------------


class Placement:
    """Puts batches and state where the train step expects them.

    Without a mesh everything stays on JAX's default device. With one (``--data-parallel``),
    over ``jax.devices()`` (every device of every process; on one process, its local
    devices), a batch is split along its first axis over the ``"data"`` mesh axis and
    parameters and optimizer state are replicated; ``jax.jit`` then compiles the step for
    that layout and inserts the gradient all-reduce itself. The same code runs on CPU, GPU or
    TPU devices, in one process or several.
    """

    def __init__(self, data_parallel: bool):
        self.mesh = Mesh(np.array(jax.devices()), ("data",)) if data_parallel else None

    def batch(self, data: Dataset, indices: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """The global batch ``(data.x[indices], data.y[indices])``, placed for the step.

        With a mesh, this process gathers only the rows that its own devices hold and
        ``jax.make_array_from_process_local_data`` assembles the global array from every
        process's part, so no process ever materialises another's rows. Every process passes
        the same ``indices`` (the same seed gives the same order), so the global batch is the
        single-process one.
        """
        if self.mesh is None:
            return jnp.asarray(data.x[indices]), jnp.asarray(data.y[indices])
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        local = indices[self._local_rows(sharding, len(indices))]
        return tuple(
            jax.make_array_from_process_local_data(sharding, a[local], (len(indices), *a.shape[1:]))
            for a in (data.x, data.y)
        )

    @staticmethod
    def _local_rows(sharding: NamedSharding, n: int) -> np.ndarray:
        """The rows of an ``n``-row batch that this process's devices hold, ascending.

        That is the order in which ``make_array_from_process_local_data`` expects them (a
        process's devices may hold rows that are not contiguous; each row is taken once).
        """
        bounds = {
            index[0].indices(n)[:2]
            for index in sharding.addressable_devices_indices_map((n,)).values()
        }
        return np.concatenate([np.arange(start, stop) for start, stop in sorted(bounds)])

    def replicate(self, tree: Any) -> Any:
        """Every array leaf of ``tree`` on every device of the mesh (or on the default device).

        Across processes ``jax.device_put`` also checks that every process passes the same
        value, which the same seed guarantees for the initial parameters.
        """
        if self.mesh is None:
            return jax.tree.map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, tree)
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(
            lambda a: jax.device_put(a, sharding) if isinstance(a, np.ndarray | jax.Array) else a,
            tree,
        )


# --------------------------------------------------------------------------------------
# The loop, shared by both frameworks.
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a script's ``make_run`` returns for one activation.

    ``state`` is any pytree (model and optimizer state); ``train_step(state, x, y)`` returns
    ``(new_state, loss)`` without mutating ``state``; ``predict(state, x)`` returns logits;
    ``compile_step(state, x, y)`` returns the ``jax.stages.Compiled`` executable of
    ``train_step`` for those arguments (how to get it depends on the framework's jit).
    """

    state: Any
    train_step: Callable[[Any, jax.Array, jax.Array], tuple[Any, jax.Array]]
    predict: Callable[[Any, jax.Array], jax.Array]
    compile_step: Callable[[Any, jax.Array, jax.Array], jax.stages.Compiled]


def train(
    activation: str,
    run: Run,
    args: argparse.Namespace,
    order: np.ndarray,
    place: Placement,
    progress: bool = True,
) -> dict:
    """Runs ``args.steps`` steps over the batches in ``order``; returns the run's metrics entry.

    Stops at the first non-finite loss and keeps the parameters from before it (see the module
    docstring for what is recorded then). ``progress=False`` hides the progress bar (runs
    trained side by side in threads).
    """
    data: Dataset = args.data
    state = place.replicate(run.state)
    temp_bytes = step_temp_bytes(run.compile_step(state, *place.batch(data, order[0])))
    losses: list[float | None] = []
    first_nonfinite = None
    # Every process runs every step (each holds part of each batch); process 0 reports.
    main_process = jax.process_index() == 0
    bar = tqdm(
        range(1, args.steps + 1),
        desc=f"{activation:>6} {args.dtype}",
        unit="step",
        disable=not (main_process and progress),
    )
    for step in bar:
        x, y = place.batch(data, order[step - 1])
        new_state, loss = run.train_step(state, x, y)
        # The loss is replicated: every process sees the same value and stops at the same step.
        loss = float(loss)
        if not math.isfinite(loss):
            first_nonfinite = step
            # tqdm's iterator updates its count lazily; show the step it stopped at.
            bar.n = step
            bar.set_postfix(loss=loss)
            bar.close()
            if main_process:
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
        "step_temp_bytes": temp_bytes,
    }


def step_temp_bytes(compiled: jax.stages.Compiled) -> int | None:
    """Temporary (scratch) memory of the compiled train step, in bytes, per device.

    XLA's own figure for the executable that the loop runs (the train step lowered and
    compiled for the loop's first arguments). It covers what the forward pass keeps for the
    backward pass, which is what an activation's custom derivative rule decides, and excludes
    the arguments and outputs (parameters, optimizer state, batch). ``None`` where the backend
    reports no memory analysis (``memory_analysis()`` returns None).
    """
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def step_bytes(compiled: jax.stages.Compiled) -> int | None:
    """Everything the compiled step needs on a device at once, in bytes, per device.

    ``argument + output + temp - alias`` from XLA's ``memory_analysis()``: the inputs
    (parameters, optimizer state, batch), the results, the scratch space (see
    :func:`step_temp_bytes`), less the outputs written into donated inputs' buffers. What
    examples/memory_budget.py compares against a budget. ``None`` where the backend reports no
    memory analysis.
    """
    a = compiled.memory_analysis()
    if a is None:
        return None
    return int(
        a.argument_size_in_bytes
        + a.output_size_in_bytes
        + a.temp_size_in_bytes
        - a.alias_size_in_bytes
    )


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
        f"{'final loss':>10} {'train acc':>9} {'step temp MiB':>13}"
    ]
    for r in runs:
        temp = r["step_temp_bytes"]
        lines.append(
            f"{r['activation']:<10} {r['dtype']:<8} {r['steps']:>5} "
            f"{fmt(r['first_nonfinite_step'], 'd'):>13} {fmt(r['final_loss'], '.4g'):>10} "
            f"{r['train_accuracy']:>9.3f} {fmt(None if temp is None else temp / 2**20, '.3f'):>13}"
        )
    return "\n".join(lines)


def main(
    framework: str,
    make_run: Callable[[str, Dataset, argparse.Namespace], Run],
    argv: list[str] | None = None,
) -> None:
    args = parse_args(f"Train an MLP with {framework} + optax, comparing activations.", argv)
    # In a multi-process run every process trains; only process 0 prints and writes files.
    main_process = jax.process_index() == 0
    log = print if main_process else lambda *_: None
    devices = jax.local_devices()
    log(f"backend: {jax.default_backend()}, {len(devices)} device(s): {devices}")
    if jax.process_count() > 1:
        log(
            f"multi-process: {jax.process_count()} processes, {jax.device_count()} devices in "
            "all; this is process 0, the one that reports"
        )
    place = Placement(args.data_parallel)
    if place.mesh is not None:
        log(
            f"data parallel: each batch sharded over mesh {dict(place.mesh.shape)}, "
            "parameters and optimizer state replicated"
        )
    data = args.data
    log(
        f"dataset: {data.name} ({len(data.y)} examples, {data.num_features} features, "
        f"{data.num_classes} classes); MLP {data.num_features}-"
        f"{'-'.join(map(str, HIDDEN))}-{data.num_classes}, compute {args.dtype}, "
        f"Adam lr {args.lr}, batch {args.batch_size}, {args.steps} steps"
    )
    # The same in every process (same seed), so the global batches are the single-process ones.
    order = batch_order(len(data.y), args.batch_size, args.steps, args.seed)

    runs = []
    start = time.perf_counter()
    for activation in args.activations:
        runs.append(train(activation, make_run(activation, data, args), args, order, place))
    if not main_process:
        return

    metrics = {
        "backend": jax.default_backend(),
        # The devices the runs used: every device of every process with --data-parallel,
        # otherwise one.
        "device_count": jax.device_count() if place.mesh is not None else 1,
        "process_count": jax.process_count(),
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
