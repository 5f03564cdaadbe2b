"""Benchmarks: time, memory and accuracy of every registry activation against its peers.

    python benchmarks/run.py [--quick] [--out DIR] [--no-torch]

Every entry of tests/registry.py is measured with no edit here. One run writes DIR/results.json
(every figure, stamped with commit, machine, versions, date and command), DIR/results.md (goals
and tables) and two plots. ``--quick``: fewer and smaller sizes; ``--render JSON``: rewrite the
report from a saved results.json without measuring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import time

os.environ["JAX_ENABLE_X64"] = "0"  # the float32 default is measured; never inherit x64
os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]  # the registry, helpers

import _measure as M  # noqa: E402
import _report  # noqa: E402
import _variants as V  # noqa: E402
import jax  # noqa: E402
from registry import ENTRIES  # noqa: E402

SCHEMA = "stable_layers.benchmarks/3"
DTYPES = ["float32", "bfloat16", "float16"]  # memory and accuracy; time: config "dtypes"
# sizes: elements of the timed kernels (goals read at >= goal_from); step, mem: (depth, width,
# batch) of the MLP; mem_depths: the float32 memory-by-depth plot; sweep_n: float32 accuracy.
CONFIGS = {"full": dict(dtypes=["float32", "bfloat16"], goal_from=2**20, mem=[8, 1024, 2048])}
CONFIGS["full"].update(sizes=[2**p for p in range(12, 23, 2)], rounds=11, target_s=0.005)
CONFIGS["full"].update(step=[8, 1024, 2048], step_rounds=5, mem_depths=[2, 4, 8, 16])
CONFIGS["full"].update(sweep_n=1 << 20, bits=[1, 2, 4, 8], code_n=1 << 16)
CONFIGS["quick"] = dict(CONFIGS["full"], sizes=[2**12, 2**16, 2**20], rounds=5, target_s=0.002)
CONFIGS["quick"].update(step=[8, 512, 512], step_rounds=3, mem_depths=[2, 8], sweep_n=1 << 16)
# The test suite's mode: every table in seconds, with the default, the reference and the A/A.
CONFIGS["tiny"] = dict(CONFIGS["quick"], sizes=[2**10], rounds=2, target_s=2e-4, step=[1, 32, 32])
CONFIGS["tiny"].update(step_rounds=2, mem=[1, 32, 32], mem_depths=[1], sweep_n=1 << 10)
CONFIGS["tiny"].update(goal_variants_only=True, bits=[4], code_n=1 << 10)

METHOD = """\
Kernel time: jax.vjp(f, x) and the pullback of g, returning (f(x), dx), jitted, inputs uniform
on [-8, 8], outputs into donated buffers; torch: CPU, 2 threads, torch.autograd.grad; glibc
keeps freed memory (mallopt). All variants of an entry, dtype and size and the bound are timed
interleaved (a seeded shuffle per round; a sample is k calls and one sync, one k per group);
figures are medians over rounds, ratios are within a group. The A/A control (flax.linen's
function where it is the reference, else a second copy of it) is in every group: its distance
from 1.00 is the noise floor. Bound: a jitted (x*c, g*c), the least traffic of a fwd+bwd;
"of bound" = t_bound / t. MLP: depth x (x @ W, activation), float32 parameters cast to the
compute dtype, loss mean(h^2) in float32; time: grad + SGD update, params donated, interleaved;
memory: jit(grad(loss)).lower(...).compile().memory_analysis().temp_size_in_bytes
(helpers.mlp_temp_bytes, with a bias per layer, x @ W + b, as issue 11 measured it).
"minimal": a hand-written custom_vjp saving y (the registry's minimal),
with and without a float32 upcast; its goal takes the smaller. Accuracy: helpers.sweep (all
finite 16-bit values; float32: uniform on the entry's sweep_limit plus log-spaced magnitudes to
finfo.max) less subnormal inputs (XLA on CPU reads them as 0), in ulps of the registry's
forward_scale / scale against its float64 reference / derivative (helpers.ulp_error);
non-finite results where the reference is finite are counted apart, not in the ulps.
Slope codes ("ours bits=k", entries with a "derivative" policy): not in the ulps table; their
decoded slope (cotangent 1) on N(0, 1) inputs against the float64 derivative: max and RMS error
and the bound (max - min)/(2^k - 1) over the finite slopes; their time goals are ratios to the
same entry's exact "derivative" policy in the same interleaved group."""


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def stamp(mode: str, command: str, torch, torch_note: str) -> dict:
    import stable_layers

    pkg = os.path.dirname(os.path.abspath(stable_layers.__file__))

    def git(*a):
        p = subprocess.run(["git", "-C", pkg, *a], capture_output=True, text=True, check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    dirty = git("status", "--porcelain", "--", ".")
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "command": command,
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "uncommitted_changes": [ln.strip() for ln in (dirty or "").splitlines()],
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
        | {"python": platform.python_version(), "backend": jax.default_backend()},
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "flax", "numpy")}
        | {"torch": torch.__version__ if torch else "not used"}
        | {"stable_layers": stable_layers.__version__},
        "torch": torch_note,
        "allocator": M.keep_freed_memory(),
        "load_average_start": list(os.getloadavg()),
        "method": METHOD,
    }


def memory(cfg: dict, table: dict, log) -> dict:
    """Compiled temp bytes of the MLP step: every dtype at cfg["mem"], float32 by depth."""
    depth, width, batch = cfg["mem"]
    rows = {}
    for e in ENTRIES:
        vs = [V.IDENTITY] + [v for v in table[e.name][0] if v.kind not in ("aa", "torch")]
        if e.minimal is not None:
            vs += [V.minimal(e, upcast=False), V.minimal(e, upcast=True)]
        rows[e.name] = vs
    memo = {}

    def tb(v, d, k):  # identity (and a function two entries share) is compiled once
        if (v.fn, d, k) not in memo:
            memo[v.fn, d, k] = M.temp_bytes(v.fn, d, k, width, batch)
        return memo[v.fn, d, k]

    out = {"depth": depth, "width": width, "batch": batch, "bytes": {}}
    for d in DTYPES:
        out["bytes"][d] = {name: {v.key: tb(v, d, depth) for v in vs} for name, vs in rows.items()}
        log(f"  temp bytes {d}: {out['bytes'][d]}")
    out["labels"] = {name: {v.key: v.label for v in vs} for name, vs in rows.items()}
    # By depth (float32): identity, the reference, ours (default) and minimal.
    by = {}
    for e in ENTRIES:
        keys = ("identity", table[e.name][1], f"ours_{next(iter(e.residuals))}", "minimal")
        by[e.name] = {
            v.key: {str(k): tb(v, "float32", k) for k in cfg["mem_depths"]}
            for v in rows[e.name]
            if v.key in keys
        }
    out["by_depth"] = {"depths": cfg["mem_depths"], "bytes": by}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, smaller sizes")
    p.add_argument("--out", default=HERE, help="where results.json/.md and the plots go")
    p.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    p.add_argument("--render", metavar="JSON", help="rewrite the report from a results.json")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(args.render) as fh:
            return write(json.load(fh), args.out)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    if args.no_torch:
        os.environ[V.NO_TORCH_ENV] = "1"
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    torch, note = V.load_torch()
    log(note)
    command = shlex.join(["python", "benchmarks/run.py", *argv])
    res = {
        "schema": SCHEMA,
        "meta": stamp(mode, command, torch, note),
        "config": cfg,
        "entries": {},
    }
    table = {e.name: V.for_entry(e, torch, bits=cfg["bits"]) for e in ENTRIES}
    if cfg.get("goal_variants_only"):  # the tiny mode: what the goals read, A/A, torch
        for name, (vs, ref, aa) in table.items():
            goal = (ref, aa, "torch", "ours_derivative")
            keep = [v for v in vs if v is vs[0] or v.key in goal or v.kind == "codes"]
            table[name] = (keep, ref, aa)
    for name, (vs, ref, aa) in table.items():
        labels = {v.key: {"label": v.label, "kind": v.kind} for v in vs}
        res["entries"][name] = {"reference": ref, "aa": aa, "variants": labels}

    def ratios(what, r):
        log(f"  {what}: " + " ".join(f"{k}={x['ratio']:.2f}" for k, x in r.items()))
        return r

    log("accuracy")
    acc = res["accuracy"] = {d: {} for d in DTYPES}
    codes = res["code_error"] = {d: {} for d in DTYPES}
    for e, d in itertools.product(ENTRIES, DTYPES):
        vs = [v for v in table[e.name][0] if v.kind not in ("aa", "codes")]
        acc[d][e.name] = M.accuracy(e, vs, torch, d, cfg["sweep_n"])
        cs = [v for v in table[e.name][0] if v.kind == "codes"]
        if cs:
            codes[d][e.name] = {v.key: M.code_error(e, v, d, cfg["code_n"]) for v in cs}
    log("memory")
    res["mlp_temp"] = memory(cfg, table, log)
    log("HLO op counts")
    res["hlo"] = {
        name: {v.key: M.hlo_counts(v.fn) for v in vs if v.kind not in ("aa", "torch")}
        for name, (vs, _, _) in table.items()
    }
    log("kernel time")
    kt = res["kernel_time"] = {name: {d: [] for d in cfg["dtypes"]} for name in table}
    for (name, (vs, ref, _)), d, n in itertools.product(table.items(), cfg["dtypes"], cfg["sizes"]):
        r = M.kernel_time(vs, ref, d, n, torch, cfg["rounds"], cfg["target_s"])
        kt[name][d].append(r)
        ratios(f"{name} {d} 2^{n.bit_length() - 1}", r["results"])
    log("MLP step time")
    st = res["mlp_step"] = dict(zip(("depth", "width", "batch"), cfg["step"]), results={})
    for name, (vs, ref, _) in table.items():
        jvs = [V.IDENTITY] + [v for v in vs if v.kind != "torch"]
        st["results"][name] = ratios(name, M.step_time(jvs, ref, cfg))
    res["meta"]["load_average_end"] = list(os.getloadavg())
    res["meta"]["duration_s"] = time.time() - t0
    return write(res, args.out)


def write(res: dict, out: str) -> int:
    res["goals"] = _report.goals(res)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    md = _report.markdown(res)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(md)
    _report.plots(res, out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
