"""Smoke tests for examples/: run the training scripts as a user would and check their contract.

The scripts run in subprocesses with a clean JAX environment (this process has x64 enabled by
conftest.py), all started at once by a module fixture so the whole file costs about as long as
its slowest run. With the defaults, the float16 naive run goes non-finite at step 14 (Equinox)
and 17 (Flax nnx) on digits, so ``STEPS`` leaves a margin.

The multi-process runs (``jax.distributed`` on localhost, gloo collectives between two CPU
processes of two devices each) start in a second fixture, only when their tests run. Every
subprocess gets a session of its own, so a failure or a timeout kills it with all its children.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = {
    "equinox": EXAMPLES / "train_mlp_equinox.py",
    "flax": EXAMPLES / "train_mlp_flax.py",
}
STEPS = 30
DP_STEPS = 10
DEVICES = 8
ACTIVATIONS = ["naive", "jax", "stable", "xsin"]
RUN_KEYS = {
    "activation",
    "dtype",
    "steps",
    "losses",
    "first_nonfinite_step",
    "final_loss",
    "train_accuracy",
    "step_temp_bytes",
}
MP_STEPS = 20  # the multi-process comparison
MP_TIMEOUT = 240  # seconds for a multi-process run; its processes are killed after that
# Environment variables through which jax.distributed.initialize() detects a cluster: removed,
# so that a test run inside a SLURM job or a pod behaves as on a workstation.
CLUSTER_ENV = ("SLURM_", "OMPI_", "PMI_", "KUBERNETES_", "TPU_", "MEGASCALE_")


def _env(devices: int | None = None, cpu_devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", *CLUSTER_ENV))}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if cpu_devices:  # the jax_num_cpu_devices option, which works with jax.distributed
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    return env


class _Script:
    """One script invocation, started on construction; ``result()`` waits for it."""

    def __init__(
        self,
        script: str,
        args: list[str],
        out: Path | None,
        devices: int | None = None,
        cpu_devices: int | None = None,
    ):
        self.out = out
        cmd = [sys.executable, str(SCRIPTS[script]), *args]
        if out is not None:
            cmd += ["--out", str(out)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(devices, cpu_devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: kill() reaches its children too
        )
        self.stdout = self.stderr = None

    def result(self, timeout: float = 600) -> _Script:
        if self.stdout is None:
            try:
                self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self

    @property
    def metrics(self) -> dict:
        self.result()
        assert self.proc.returncode == 0, self.stderr[-3000:]
        return json.loads((self.out / "metrics.json").read_text())

    def kill(self) -> None:
        """Kills the script's process group (the script and anything it started), reaps it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group is empty: nothing left running
            pass
        if self.stdout is None:
            self.stdout, self.stderr = self.proc.communicate()

    def group_alive(self) -> bool:
        """Whether any process of the script's group (group id: its pid) is left, once reaped."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    started = {}
    for name in SCRIPTS:
        # The contract's command, with float16 and all activations.
        started[name] = _Script(
            name,
            ["--activation", "all", "--dtype", "float16", "--steps", str(STEPS)],
            tmp / name / "out" / "nested",  # --out is created, parents included
        )
        started[f"{name}-dp"] = _Script(
            name,
            ["--activation", "stable", "--steps", str(DP_STEPS), "--data-parallel"],
            tmp / f"{name}-dp",
            devices=DEVICES,
        )
    # An argparse error from the script itself (the rest are checked in-process below).
    started["bad-activation"] = _Script("flax", ["--activation", "relu"], None)
    yield started
    for run in started.values():
        run.kill()


@pytest.mark.parametrize("script", SCRIPTS)
def test_metrics_schema(runs, script):
    run = runs[script].result()
    metrics = run.metrics
    assert set(metrics) == {"backend", "device_count", "process_count", "dataset", "runs"}
    assert metrics["backend"] == "cpu"
    assert metrics["device_count"] == 1
    assert metrics["process_count"] == 1
    assert metrics["dataset"] == "digits"
    assert [r["activation"] for r in metrics["runs"]] == ACTIVATIONS
    for r in metrics["runs"]:
        assert set(r) == RUN_KEYS
        assert r["dtype"] == "float16"
        assert r["steps"] == STEPS and len(r["losses"]) == STEPS
        bad = r["first_nonfinite_step"]
        assert bad is None or (isinstance(bad, int) and 1 <= bad <= STEPS)
        # Finite losses up to the first non-finite step, null from there on.
        finite = r["losses"] if bad is None else r["losses"][: bad - 1]
        assert all(isinstance(v, float) and math.isfinite(v) for v in finite)
        assert all(v is None for v in r["losses"][len(finite) :])
        assert r["final_loss"] == r["losses"][-1]
        assert isinstance(r["train_accuracy"], float) and 0.0 <= r["train_accuracy"] <= 1.0
        # XLA's temp memory of the compiled step: reported on CPU.
        assert isinstance(r["step_temp_bytes"], int) and r["step_temp_bytes"] > 0


@pytest.mark.parametrize("script", SCRIPTS)
def test_stable_float16_step_needs_less_temp_memory_than_jax(runs, script):
    """Issue 11: the main job prints this; it once read 917,572 bytes against 393,284."""
    by = {r["activation"]: r["step_temp_bytes"] for r in runs[script].result().metrics["runs"]}
    assert by["stable"] < by["jax"], by


@pytest.mark.parametrize("script", SCRIPTS)
def test_naive_softplus_goes_nonfinite_in_float16(runs, script):
    run = runs[script].result()
    naive = run.metrics["runs"][0]
    assert naive["activation"] == "naive"
    assert naive["first_nonfinite_step"] is not None
    assert 1 < naive["first_nonfinite_step"] <= STEPS  # it trains, then overflows
    assert naive["final_loss"] is None
    # Reported, and the script went on to the other activations (and exited 0, see metrics).
    assert f"non-finite loss at step {naive['first_nonfinite_step']}" in run.stdout
    assert "diverged: naive" in run.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_stable_layers_keep_training(runs, script):
    by_name = {r["activation"]: r for r in runs[script].metrics["runs"]}
    for name in ("jax", "stable", "xsin"):
        r = by_name[name]
        assert r["first_nonfinite_step"] is None, name
        assert all(math.isfinite(v) for v in r["losses"]), name
        # The loss falls well below its starting value (log 10 = 2.3 for 10 classes).
        assert sum(r["losses"][-5:]) / 5 < 0.25 * r["losses"][0], name
    # Accuracy rises from chance (0.1 at initialisation) as training goes on: 10 steps
    # (the data-parallel run, which computes the same steps, checked below) and 30 steps.
    stable = by_name["stable"]
    dp = runs[f"{script}-dp"].metrics["runs"][0]
    assert 0.3 < dp["train_accuracy"] < stable["train_accuracy"]
    assert stable["train_accuracy"] > 0.85


@pytest.mark.parametrize("script", SCRIPTS)
def test_all_activations_share_init_and_data_order(runs, script):
    by_name = {r["activation"]: r for r in runs[script].metrics["runs"]}
    first = [by_name[n]["losses"][0] for n in ("naive", "jax", "stable")]
    # Step 1 sees the same parameters and batch; the three softplus variants agree there.
    assert max(first) - min(first) < 1e-2 * first[0]
    # jax.nn.softplus and stable_layers' Softplus compute the same function: same curve.
    for a, b in zip(by_name["jax"]["losses"][:10], by_name["stable"]["losses"][:10]):
        assert a == pytest.approx(b, rel=2e-2)


@pytest.mark.parametrize("script", SCRIPTS)
def test_output_and_loss_figure(runs, script):
    run = runs[script].result()
    png = (run.out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert 10_000 < len(png) < 200_000
    assert "backend: cpu" in run.stdout  # backend and devices printed at the start
    header = next(line for line in run.stdout.splitlines() if line.startswith("activation"))
    assert "train acc" in header
    assert header.endswith("step temp MiB")
    for r in run.metrics["runs"]:  # one summary row per run, ending with its step memory
        (row,) = [
            x for x in run.stdout.splitlines() if x.split()[:2] == [r["activation"], "float16"]
        ]
        assert row.split()[-1] == f"{r['step_temp_bytes'] / 2**20:.3f}"
    assert f"{STEPS}/{STEPS}" in run.stderr  # tqdm progress bar, completed for a finite run


@pytest.mark.parametrize("script", SCRIPTS)
def test_data_parallel_on_host_devices(runs, script):
    run = runs[f"{script}-dp"].result()
    metrics = run.metrics
    assert metrics["device_count"] == DEVICES
    assert f"mesh {{'data': {DEVICES}}}" in run.stdout
    (dp,) = metrics["runs"]
    single = next(r for r in runs[script].metrics["runs"] if r["activation"] == "stable")
    # Same initialisation and batches, the batch split over 8 devices: the same training,
    # up to float16 summation order.
    assert dp["losses"] == pytest.approx(single["losses"][:DP_STEPS], rel=2e-2)


def _free_port() -> int:
    """A TCP port that nothing listens on now (the OS picks it when binding port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_all(scripts: list[_Script], timeout: float) -> None:
    """Waits for ``scripts`` together; once one fails or time runs out, kills the rest.

    A process of a multi-process run whose partner died would otherwise wait minutes for the
    coordinator or a collective before giving up. Reading every pipe while waiting (a
    ``communicate`` that times out keeps what it read) means no script blocks on a full pipe.
    """
    deadline = time.monotonic() + timeout
    pending = list(scripts)
    while pending and time.monotonic() < deadline:
        for s in list(pending):
            try:
                s.stdout, s.stderr = s.proc.communicate(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            pending.remove(s)
            if s.proc.returncode != 0:
                deadline = 0.0  # a partner failed: stop waiting for the others
    for s in pending:
        s.kill()


@pytest.fixture(scope="module")
def multi_process(tmp_path_factory):
    """Per script, one run in 2 processes × 2 CPU devices and the same run in 1 process × 4.

    The Equinox pair passes --data-parallel, the Flax pair leaves it to be implied by the
    multi-process flags; the 4-device reference passes it. Both processes of a pair get their
    own --out, so that what process 1 writes (nothing) can be checked.
    """
    tmp = tmp_path_factory.mktemp("multi_process")
    common = ["--activation", "stable", "--dtype", "float32", "--steps", str(MP_STEPS)]
    started: dict[str, _Script | list[_Script]] = {}
    for name in SCRIPTS:
        dp = ["--data-parallel"] if name == "equinox" else []
        cluster = ["--coordinator-address", f"localhost:{_free_port()}", "--num-processes", "2"]
        started[name] = [
            _Script(
                name,
                [*common, *dp, *cluster, "--process-id", str(i)],
                tmp / f"{name}-process{i}",
                cpu_devices=2,
            )
            for i in range(2)
        ]
        started[f"{name}-single"] = _Script(
            name, [*common, "--data-parallel"], tmp / f"{name}-single", cpu_devices=4
        )
    # --distributed outside a cluster (cluster variables removed by _env): an argparse error.
    started["no-cluster"] = _Script("equinox", ["--distributed"], None)
    yield started
    for run in started.values():
        for script in run if isinstance(run, list) else [run]:
            script.kill()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_multi_process_matches_single_process(multi_process, script):
    processes = multi_process[script]
    _wait_all(processes, MP_TIMEOUT)
    for i, p in enumerate(processes):
        assert p.proc.returncode == 0, f"process {i}: {p.stderr[-3000:]}"
    # Nothing left running: every process group is empty.
    assert not any(p.group_alive() for p in processes)
    first, second = processes

    metrics = first.metrics
    assert metrics["process_count"] == 2
    assert metrics["device_count"] == 4
    assert "mesh {'data': 4}" in first.stdout
    (run,) = metrics["runs"]
    assert run["steps"] == MP_STEPS and run["first_nonfinite_step"] is None
    single = multi_process[f"{script}-single"].metrics
    assert single["process_count"] == 1 and single["device_count"] == 4
    # Same global batches in the same order, same devices, same step: the same losses.
    assert run["losses"] == pytest.approx(single["runs"][0]["losses"], rel=1e-4)
    assert isinstance(run["step_temp_bytes"], int)

    # Only process 0 reports: process 1 prints no table, shows no bar, writes no files.
    assert not second.out.exists()
    assert "activation" not in second.stdout and "wrote" not in second.stdout
    assert f"{MP_STEPS}/{MP_STEPS}" in first.stderr
    assert f"{MP_STEPS}/{MP_STEPS}" not in second.stderr


@pytest.mark.slow
def test_distributed_outside_a_cluster_is_an_argparse_error(multi_process):
    run = multi_process["no-cluster"].result(timeout=MP_TIMEOUT)
    assert run.proc.returncode == 2, run.stderr[-3000:]
    assert "argument --distributed: jax.distributed.initialize() found no cluster" in run.stderr
    assert not run.group_alive()


def test_unknown_activation_is_an_argparse_error(runs):
    run = runs["bad-activation"].result()
    assert run.proc.returncode == 2
    assert "argument --activation: invalid choice: 'relu'" in run.stderr


@functools.cache
def _load_common():
    """examples/_common.py, imported in this process (it is not a package module)."""
    name = "_stable_layers_examples_common"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it is executing
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--activation", "gelu"], "argument --activation: invalid choice"),
        (["--steps", "0"], "argument --steps: must be >= 1"),
        (["--steps", "-3"], "argument --steps: must be >= 1"),
        (["--steps", "ten"], "argument --steps: invalid int value"),
        (["--batch-size", "1798"], "--batch-size 1798 is larger than digits's 1797 examples"),
        (["--dataset", "wine", "--batch-size", "500"], "larger than wine's 178 examples"),
        (["--dtype", "float64"], "argument --dtype: invalid choice"),
        (["--lr", "0"], "argument --lr: must be a positive finite number"),
        (["--dataset", "mnist"], "argument --dataset: invalid choice"),
        # The multi-process flags: all three or none, each value checked.
        (
            ["--num-processes", "2", "--process-id", "0"],
            "--num-processes and --process-id given without --coordinator-address: "
            "--coordinator-address, --num-processes, --process-id go together",
        ),
        (
            ["--coordinator-address", "localhost:1234"],
            "--coordinator-address given without --num-processes and --process-id",
        ),
        (
            ["--coordinator-address", "localhost:1234", "--num-processes", "2"],
            "--coordinator-address and --num-processes given without --process-id",
        ),
        (["--num-processes", "0"], "argument --num-processes: must be >= 1, got 0"),
        (["--process-id", "-1"], "argument --process-id: must be >= 0, got -1"),
        (["--process-id", "one"], "argument --process-id: invalid int value: 'one'"),
        (
            ["--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "2"],
            "argument --process-id: 2 is not in [0, 2) for --num-processes 2",
        ),
        (
            ["--coordinator-address", "localhost"],
            "argument --coordinator-address: expected HOST:PORT with PORT in 1..65535 "
            "(e.g. 10.0.0.1:1234), got 'localhost'",
        ),
        (["--coordinator-address", ":1234"], "argument --coordinator-address: expected HOST"),
        (["--coordinator-address", "h:65536"], "argument --coordinator-address: expected HOST"),
        (["--coordinator-address", "h:port"], "argument --coordinator-address: expected HOST"),
        (
            ["--distributed", "--process-id", "0"],
            "argument --distributed: not allowed with --process-id",
        ),
        (
            ["--distributed", "--coordinator-address", "h:1", "--num-processes", "2"],
            "argument --distributed: not allowed with --coordinator-address, --num-processes",
        ),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    common = _load_common()
    with pytest.raises(SystemExit) as exc:
        common.parse_args("test", argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_must_divide_by_device_count(monkeypatch, capsys):
    common = _load_common()
    monkeypatch.setattr(common.jax, "device_count", lambda: DEVICES)
    with pytest.raises(SystemExit) as exc:
        common.parse_args("test", ["--data-parallel", "--batch-size", "100"])
    assert exc.value.code == 2
    assert f"must divide by the {DEVICES} devices of 1 process(es)" in capsys.readouterr().err
    assert common.parse_args("test", ["--data-parallel", "--batch-size", "64"]).data_parallel


def test_defaults_and_batch_order():
    common = _load_common()
    args = common.parse_args("test", [])
    assert (args.activations, args.dtype, args.steps, args.batch_size) == (
        ACTIVATIONS,
        "float16",
        150,
        128,
    )
    data = args.data
    assert data.x.shape == (1797, 64) and data.num_classes == 10
    assert abs(data.x.mean()) < 1e-5  # standardised
    order = common.batch_order(len(data.y), 128, 30, seed=0)
    assert order.shape == (30, 128)
    # Each epoch (14 full batches) visits distinct examples; the seed fixes the order.
    assert len(set(order[:14].ravel().tolist())) == 14 * 128
    assert (order == common.batch_order(len(data.y), 128, 30, seed=0)).all()
    assert not (order == common.batch_order(len(data.y), 128, 30, seed=1)).all()


def test_plot_marks_divergence_at_step_one(tmp_path):
    # A run that is non-finite from its first step has no curve; the plot still marks it.
    common = _load_common()
    metrics = {
        "runs": [
            {"activation": "naive", "losses": [None, None], "first_nonfinite_step": 1},
            {"activation": "stable", "losses": [2.3, 1.1], "first_nonfinite_step": None},
        ]
    }
    common.plot_losses(metrics, tmp_path / "loss.png", "title")
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
