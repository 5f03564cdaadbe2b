"""Benchmark suite: speed, memory and accuracy of stable_layers against its peers.

    python benchmarks/run.py [--quick] [--out DIR] [--no-torch]

Runs everything in one process (the peak-RSS measurement in one child process), prints the
tables, and writes DIR/results.json (every figure, machine, versions, method), DIR/results.md
(the tables and the goals) and DIR/*.png. ``--quick`` uses fewer and smaller sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import time

# The benchmark measures the float32 default; never inherit x64 from the caller.
os.environ["JAX_ENABLE_X64"] = "0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The registry and the test helpers (sweeps, references, ulps) live in tests/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _accuracy  # noqa: E402
import _memory  # noqa: E402
import _report  # noqa: E402
import _timing  # noqa: E402
import _variants  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

SCHEMA = "stable_layers.benchmarks/1"

CONFIGS = {
    "full": {
        "sizes": [2**p for p in range(12, 25)],
        "dtypes": ["float32", "bfloat16"],
        "rounds": 11,
        "small_rounds_factor": 2,
        "target_s": 0.005,
        "mlp_width": 1024,
        "mlp_batch": 2048,
        "mlp_depths": [2, 4, 8, 16],
        "step_width": 1024,
        "step_batch": 2048,
        "step_depth": 8,
        "step_rounds": 5,
        "sweep_n": 1 << 20,
        "op_elements": 1 << 22,
    },
    "quick": {
        "sizes": [2**12, 2**16, 2**20],
        "dtypes": ["float32", "bfloat16"],
        "rounds": 5,
        "target_s": 0.002,
        "mlp_width": 1024,
        "mlp_batch": 2048,
        "mlp_depths": [2, 8, 16],
        "step_width": 512,
        "step_batch": 512,
        "step_depth": 8,
        "step_rounds": 3,
        "sweep_n": 1 << 16,
        "op_elements": 1 << 20,
    },
    # For the test suite only: every section, at sizes that take seconds.
    "tiny": {
        "sizes": [2**10],
        "dtypes": ["float32", "bfloat16"],
        "rounds": 2,
        "target_s": 0.0002,
        "mlp_width": 32,
        "mlp_batch": 32,
        "mlp_depths": [2, 8],
        "step_width": 32,
        "step_batch": 32,
        "step_depth": 8,
        "step_rounds": 2,
        "sweep_n": 1 << 10,
        "op_elements": 1 << 12,
        # Fewer variants, to keep the test fast: the references and what the goals name.
        "variants": [
            "jax_nn_softplus",
            "ours_softplus_output",
            "ours_softplus_input_seed000",
            "ours_softplus_output_jvp",
            "autodiff_xsin",
            "ours_xsin_derivative",
        ],
    },
}

METHOD = """\
Kernel time: each function is jitted; the forward is f(x), forward+backward is
jax.vjp(f, x) followed by the pullback of a cotangent g, returning (f(x), dx). Inputs are
uniform on [-8, 8]. Outputs are written into donated buffers (the previous call's outputs), so
the allocator is not timed; glibc malloc keeps freed memory (mallopt) so torch's fresh tensors
do not page-fault. Every case of a group (one family, dtype, pass and size, plus the bound)
is warmed up, then timed in interleaved rounds (A B C, C A B, ...: a seeded shuffle per round);
a sample is k back-to-back calls and one sync, one k per group, chosen so a sample lasts about
target_s for the median case; the figure is the median over rounds (in the full run twice as
many rounds up to 2^20 elements). Ratios are between medians of the same group. The machine
is shared: the load average is recorded, and flax.linen.softplus (the same function as
jax.nn.softplus) serves as an A/A control whose departure from 1.00 is the noise floor of each
ratio.
The bound: a jitted x * c (forward: one array in, one out) and (x * c, g * c) (forward+backward:
two in, two out) moves the same bytes as the kernel at minimum; "of bound" is
t_bound / t_kernel, the fraction of the measured memory bandwidth the kernel reaches.
Memory: residuals from jax's saved_residuals on a 4096-element float32 input (arrays of more
than one element). MLP: depth x (Linear width->width + activation), loss mean(h^2), SGD step
(value_and_grad + update); temp bytes from
jax.jit(step).lower(params, x).compile().memory_analysis().temp_size_in_bytes. Step time:
the same step jitted with donated params, interleaved rounds, median. Peak RSS: a child
process compiles and warms each step, trims malloc, resets the peak-RSS counter
(/proc/self/clear_refs 5), runs one step and reads VmHWM.
Accuracy: stable_layers._testing.sweep (exhaustive for 16-bit dtypes; 2^20 points for float32
in the full run: uniform on [-120, 120] plus log-spaced magnitudes to finfo.max), references
in float64, errors in ulps of the dtype at the reference (stable_layers._testing.ulp_error,
subnormal flush-to-zero counted as exact; subnormal inputs left out, since XLA on CPU reads
them as zero for every kernel alike); x*sin(x) compared on |x| <= 1e4. The gradient is
the vjp of a cotangent of ones. Non-finite results where the reference is finite are counted
separately (nonfinite_points), the ulp figures are over the finite results.
torch: CPU build, torch.set_num_threads(2), autograd (torch.autograd.grad), same inputs."""


# ----------------------------------------------------------------------------------------
# Machine and versions.
# ----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return "not installed"


def source_info() -> dict:
    """Which stable_layers was measured: its path, the git commit, and uncommitted changes."""
    import subprocess

    import stable_layers

    pkg = os.path.dirname(os.path.abspath(stable_layers.__file__))
    info = {"path": pkg, "git_commit": "unknown", "uncommitted_changes": []}

    def git(*args):
        proc = subprocess.run(
            ["git", "-C", pkg, *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.rstrip() if proc.returncode == 0 else None

    if os.environ.get("STABLE_LAYERS_BENCH_SOURCE"):  # e.g. an exported commit
        info["git_commit"] = os.environ["STABLE_LAYERS_BENCH_SOURCE"]
        return info
    commit = git("rev-parse", "HEAD")
    if commit:
        info["git_commit"] = commit.strip()
        dirty = git("status", "--porcelain", "--", ".")
        info["uncommitted_changes"] = dirty.splitlines() if dirty else []
    return info


def machine_info(torch_note: str) -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": {
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "flax": _version("flax"),
            "numpy": np.__version__,
            "torch": _version("torch") if "skipped" not in torch_note else "not used",
            "stable_layers": _version("stable-layers"),
        },
        "torch": torch_note,
    }


# ----------------------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------------------


def _inputs(n: int, dtype: str):
    rng = np.random.default_rng(n)
    x = rng.uniform(-8, 8, n).astype(np.float32)
    g = rng.uniform(0.5, 1.5, n).astype(np.float32)
    jdt = jnp.dtype(dtype)
    return jnp.asarray(x).astype(jdt), jnp.asarray(g).astype(jdt), x, g


def kernel_time(cfg, variants, torch, torch_vs, log) -> list[dict]:
    rows = []
    families = ("softplus", "xsin")
    for dtype in cfg["dtypes"]:
        for n in cfg["sizes"]:
            x, g, xn, gn = _inputs(n, dtype)
            if torch is not None:
                tdt = getattr(torch, dtype)
                xt = torch.from_numpy(xn).to(tdt)
                gt = torch.from_numpy(gn).to(tdt)
            for kind in ("fwd", "fwd_bwd"):
                for fam in families:
                    cases = {}
                    for v in variants:
                        if v.family != fam:
                            continue
                        if kind == "fwd":
                            cases[v.key] = _timing.jax_case(v.fn, (x,), 1)
                        else:
                            cases[v.key] = _timing.jax_case(_timing.fwd_bwd(v.fn), (x, g), 2)
                    for key, _, tfam, fn in torch_vs:
                        if tfam == fam:
                            cases[key] = _timing.torch_case(torch, fn, xt, gt, kind)
                    if kind == "fwd":
                        cases["bound"] = _timing.jax_case(lambda a: a * 1.0001, (x,), 1)
                    else:
                        cases["bound"] = _timing.jax_case(
                            lambda a, b: (a * 1.0001, b * 1.0001), (x, g), 2
                        )
                    # Small sizes are cheap: more rounds there, for a steadier median.
                    rounds = cfg["rounds"] * (
                        cfg.get("small_rounds_factor", 1) if n <= 1 << 20 else 1
                    )
                    res = _timing.measure(cases, rounds, cfg["target_s"])
                    bound = res.pop("bound")
                    ref = res[_variants.REFERENCE[fam]]["median_s"]
                    for r in res.values():
                        r["ratio"] = r["median_s"] / ref
                        r["of_bound"] = bound["median_s"] / r["median_s"]
                    arrays = 2 if kind == "fwd" else 4
                    bound["gbytes_per_s"] = arrays * n * x.dtype.itemsize / bound["median_s"] / 1e9
                    rows.append(
                        {
                            "family": fam,
                            "dtype": dtype,
                            "pass": kind,
                            "elements": n,
                            "bound": bound,
                            "results": res,
                        }
                    )
                    log(
                        f"  {fam:8s} {dtype:8s} {kind:7s} 2^{int(math.log2(n)):<2d} "
                        + " ".join(f"{k}={r['ratio']:.2f}" for k, r in res.items())
                        + f" | bound {bound['gbytes_per_s']:.1f} GB/s"
                    )
    return rows


_OPCODE = re.compile(r"=\s*[a-z0-9]+\[[^\]]*\](?:\{[^}]*\})?\s+([a-z][a-z0-9-]*)\(")
TRANSCENDENTAL = (
    "exponential",
    "exponential-minus-one",
    "log",
    "log-plus-one",
    "sine",
    "cosine",
    "tanh",
    "logistic",
    "power",
    "divide",
    "sqrt",
    "rsqrt",
)
STRUCTURAL = {"parameter", "constant", "broadcast", "tuple", "get-tuple-element", "fusion"}


def hlo_counts(fn, n: int) -> dict:
    """Op counts in the optimized HLO of the float32 forward+backward."""
    x = jnp.linspace(-8, 8, n, dtype=jnp.float32)
    text = jax.jit(_timing.fwd_bwd(fn)).lower(x, x).compile().as_text()
    ops = _OPCODE.findall(text)
    counts = {op: ops.count(op) for op in TRANSCENDENTAL}
    return {
        "transcendental": {k: v for k, v in counts.items() if v},
        "transcendental_total": sum(counts.values()),
        "elementwise_ops": sum(1 for o in ops if o not in STRUCTURAL),
        "fusions": ops.count("fusion"),
    }


def op_time(cfg, torch) -> dict:
    """Cost of single elementwise ops (ns per float32 element), interleaved."""
    n = cfg["op_elements"]
    x, _, xn, _ = _inputs(n, "float32")
    cases = {
        "x*c (bandwidth)": _timing.jax_case(lambda a: a * 1.0001, (x,), 1),
        "jnp.exp": _timing.jax_case(jnp.exp, (x,), 1),
        "jnp.log1p": _timing.jax_case(lambda a: jnp.log1p(jnp.abs(a)), (x,), 1),
        "jnp.sin": _timing.jax_case(jnp.sin, (x,), 1),
        "jnp.cos": _timing.jax_case(jnp.cos, (x,), 1),
        "jax.nn.sigmoid": _timing.jax_case(jax.nn.sigmoid, (x,), 1),
    }
    buf = np.empty_like(xn)
    cases["numpy.sin"] = _timing.Case(lambda: np.sin(xn, out=buf), lambda: None)
    if torch is not None:
        xt = torch.from_numpy(xn)
        out = torch.empty_like(xt)
        cases["torch.sin"] = _timing.Case(lambda: torch.sin(xt, out=out), lambda: None)
        cases["torch.exp"] = _timing.Case(lambda: torch.exp(xt, out=out), lambda: None)
    res = _timing.measure(cases, cfg["rounds"], cfg["target_s"])
    for r in res.values():
        r["ns_per_element"] = r["median_s"] / n * 1e9
    return {"elements": n, "dtype": "float32", "results": res}


def mlp_sections(cfg, variants, log) -> tuple[dict, dict, dict]:
    acts = [_variants.IDENTITY, *variants]
    w, b = cfg["mlp_width"], cfg["mlp_batch"]
    temp = {v.key: {} for v in acts}
    for depth in cfg["mlp_depths"]:
        for v in acts:
            temp[v.key][str(depth)] = _memory.temp_bytes(v.fn, w, b, depth)["temp_bytes"]
        log(
            f"  temp bytes depth {depth}: "
            + " ".join(f"{k}={t[str(depth)]}" for k, t in temp.items())
        )
    mlp_temp = {"width": w, "batch": b, "depths": cfg["mlp_depths"], "temp_bytes": temp}

    sw, sb, sd = cfg["step_width"], cfg["step_batch"], cfg["step_depth"]
    cases = {v.key: _memory.step_case(v.fn, sw, sb, sd) for v in acts}
    res = _timing.measure(cases, cfg["step_rounds"], 0.0, fixed_k=1)
    ref = res["jax_nn_softplus"]["median_s"]
    for r in res.values():
        r["ratio"] = r["median_s"] / ref
    log("  step time: " + " ".join(f"{k}={r['median_s'] * 1e3:.1f}ms" for k, r in res.items()))
    mlp_step = {"width": sw, "batch": sb, "depth": sd, "results": res}

    rss = _memory.peak_rss(sw, sb, sd, [v.key for v in acts])
    log(
        "  step RSS increase (KiB): "
        + " ".join(f"{k}={r['step_rss_increase_kib']}" for k, r in rss.items())
    )
    mlp_rss = {"width": sw, "batch": sb, "depth": sd, "results": rss}
    return mlp_temp, mlp_step, mlp_rss


def accuracy(cfg, variants, torch, torch_vs, log) -> dict:
    out = {}
    for dtype in _accuracy.DTYPES:
        out[dtype] = {}
        for v in variants:
            out[dtype][v.key] = _accuracy.jax_accuracy(v.fn, v.family, dtype, cfg["sweep_n"])
        for key, _, fam, fn in torch_vs:
            out[dtype][key] = _accuracy.torch_accuracy(torch, fn, fam, dtype, cfg["sweep_n"])
        log(
            f"  {dtype}: "
            + " ".join(
                f"{k}={r['forward']['max_ulp']:.2f}/{r['gradient']['max_ulp']:.2f}"
                for k, r in out[dtype].items()
            )
        )
    return out


# ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, smaller sizes (< 2 minutes)")
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="measure nothing: recompute the goals and rewrite results.md and the plots "
        "from a saved results.json (into --out)",
    )
    args = p.parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    if args.no_torch:
        os.environ[_variants.NO_TORCH_ENV] = "1"
    os.makedirs(args.out, exist_ok=True)

    t_start = time.time()
    load_start = os.getloadavg()

    def log(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    source = source_info()  # before measuring: the code imported is the code on disk now
    malloc_note = _timing.keep_freed_memory()
    torch, torch_note = _variants.load_torch()
    log(torch_note)
    variants = _variants.jax_variants()
    if cfg.get("variants"):
        variants = [v for v in variants if v.key in cfg["variants"]]
    torch_vs = _variants.torch_variants(torch) if torch is not None else []

    labels = {
        v.key: {"label": v.label, "family": v.family, "ours": v.ours, "library": "jax"}
        for v in [_variants.IDENTITY, *variants]
    }
    for key, label, fam, _ in torch_vs:
        labels[key] = {"label": label, "family": fam, "ours": False, "library": "torch"}

    log("residuals")
    residuals = {v.key: _memory.residuals(v.fn) for v in variants}
    log("accuracy")
    acc = accuracy(cfg, variants, torch, torch_vs, log)
    log("MLP memory and step time")
    mlp_temp, mlp_step, mlp_rss = mlp_sections(cfg, variants, log)
    log("kernel time")
    kt = kernel_time(cfg, variants, torch, torch_vs, log)
    log("evidence: HLO op counts and op-level timing")
    evidence = {
        "hlo_fwd_bwd_float32": {v.key: hlo_counts(v.fn, 4096) for v in variants},
        "op_time": op_time(cfg, torch),
    }

    results = {
        "schema": SCHEMA,
        "meta": {
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": mode,
            "command": "python benchmarks/run.py"
            + (" --quick" if mode == "quick" else "")
            + (" --tiny" if mode == "tiny" else "")
            + (" --no-torch" if args.no_torch else ""),
            "machine": machine_info(torch_note),
            "stable_layers_source": source,
            "load_average_1_5_15_start": list(load_start),
            "load_average_1_5_15_end": list(os.getloadavg()),
            "allocator": malloc_note,
            "duration_s": 0.0,
            "method": METHOD,
        },
        "config": cfg,
        "variants": labels,
        "kernel_time": kt,
        "residuals": residuals,
        "mlp_temp": mlp_temp,
        "mlp_step": mlp_step,
        "mlp_rss": mlp_rss,
        "accuracy": acc,
        "evidence": evidence,
    }
    results["meta"]["duration_s"] = time.time() - t_start
    write(results, args.out)
    log(f"wrote {args.out}/results.json, results.md and plots")
    return 0


def write(results: dict, out: str) -> None:
    results["goals"] = _report.goals(results)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    md = _report.markdown(results)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(md)
    _report.plots(results, out)
    print(md)


def render(path: str, out: str) -> int:
    with open(path) as fh:
        results = json.load(fh)
    os.makedirs(out, exist_ok=True)
    write(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
