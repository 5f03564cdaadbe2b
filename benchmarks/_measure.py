"""The measurements: interleaved timing, compiled temp memory, HLO op counts, accuracy.

Timing survives a shared machine: every case of a group is compiled and warmed up, then run in
rounds, each round timing every case once in a fresh seeded shuffle (A B C, C A B, ...). A
sample is k back-to-back calls and one sync, one k per group; the figure is the median over
rounds, and ratios are taken within a group, so load that comes and goes hits every case alike.
JAX cases write into donated buffers and malloc keeps freed memory, so allocation is not timed.
"""

from __future__ import annotations

import ctypes
import math
import random
import re
import statistics
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from helpers import mlp_temp_bytes, np_dtype, sweep, ulp_error


def keep_freed_memory() -> str:
    """Stop glibc from unmapping freed blocks, so torch's fresh tensors reuse warm pages."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 34)  # mmap, trim thresholds
        return "glibc mallopt: mmap threshold 1 GiB, trim threshold 16 GiB" if ok else "none"
    except OSError:
        return "none (not glibc)"


def fwd_bwd(f):
    """x, g -> (f(x), vjp(g)): the forward and backward of a training step."""

    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return run


# A timing case is (call, sync): later calls may depend on earlier ones; sync waits for all.
def jax_case(f, x, g):
    """``f(x, g) -> (a, b)``, written into donated buffers (the previous call's outputs)."""
    jf = jax.jit(lambda x, g, *_: f(x, g), donate_argnums=(2, 3), keep_unused=True)
    state = [(jnp.zeros_like(x), jnp.zeros_like(x))]

    def call():
        state[0] = jf(x, g, *state[0])

    return call, lambda: jax.block_until_ready(state[0])


def torch_case(torch, f, x, g):
    def call():
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(f(xr), xr, g)

    return call, lambda: None


def measure(cases: dict, rounds: int, target_s: float, k: int | None = None) -> dict:
    """Median (and IQR) seconds per call of each case, interleaved. ``k``: calls per sample."""
    names, calib = list(cases), []
    for call, sync in cases.values():  # compile and warm up, then time one call to choose k
        call(), sync()
        t0 = time.perf_counter()
        call(), sync()
        calib.append(max(time.perf_counter() - t0, 1e-7))
    k = k or max(1, min(10_000, math.ceil(target_s / statistics.median(calib))))
    samples = {n: [] for n in names}
    rng = random.Random(len(names) * 1_000_003 + rounds)
    for _ in range(rounds):
        for n in rng.sample(names, len(names)):
            call, sync = cases[n]
            t0 = time.perf_counter()
            for _ in range(k):
                call()
            sync()
            samples[n].append((time.perf_counter() - t0) / k)
    out = {}
    for n, s in samples.items():
        q1, q3 = np.percentile(s, [25, 75])
        out[n] = {"median_s": statistics.median(s), "iqr_s": float(q3 - q1), "calls": k}
    return out


def ratios(res: dict, ref: str) -> dict:
    for r in res.values():
        r["ratio"] = r["median_s"] / res[ref]["median_s"]
    return res


def kernel_time(vs, ref, dtype, n, torch, rounds, target_s) -> dict:
    """One interleaved group: every variant's fwd+bwd on n elements, and the bandwidth bound."""
    rng = np.random.default_rng(n)
    xn = rng.uniform(-8, 8, n).astype(np.float32)
    gn = rng.uniform(0.5, 1.5, n).astype(np.float32)
    x, g = jnp.asarray(xn).astype(dtype), jnp.asarray(gn).astype(dtype)
    cases = {}
    for v in vs:
        if v.kind == "torch":
            to = getattr(torch, dtype)
            xt, gt = torch.from_numpy(xn).to(to), torch.from_numpy(gn).to(to)
            cases[v.key] = torch_case(torch, v.fn, xt, gt)
        else:
            cases[v.key] = jax_case(fwd_bwd(v.fn), x, g)
    # The bound: two arrays in, two out, the least any fwd+bwd moves.
    cases["bound"] = jax_case(lambda a, b: (a * 1.0001, b * 1.0001), x, g)
    res = measure(cases, rounds, target_s)
    bound = res.pop("bound")
    bound["gbytes_per_s"] = 4 * n * x.dtype.itemsize / bound["median_s"] / 1e9
    for r in ratios(res, ref).values():
        r["of_bound"] = bound["median_s"] / r["median_s"]
    return {"elements": n, "bound": bound, "results": res}


def _mlp_step(act, dtype, depth, width, batch):
    """An SGD step of helpers.mlp_temp_bytes's MLP, params donated and fed back."""
    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    ws = [jax.random.normal(k, (width, width), jnp.float32) / math.sqrt(width) for k in keys]
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, width), jnp.float32)

    def loss(ws, x):
        h = x.astype(dtype)
        for w in ws:
            h = act(h @ w.astype(dtype))
        return jnp.mean(h.astype(jnp.float32) ** 2)

    step = jax.jit(
        lambda ws, x: [w - 1e-3 * g for w, g in zip(ws, jax.grad(loss)(ws, x))], donate_argnums=0
    )
    state = [ws]

    def call():
        state[0] = step(state[0], x)

    return call, lambda: jax.block_until_ready(state[0])


def step_time(vs, ref, cfg) -> dict:
    cases = {v.key: _mlp_step(v.fn, "float32", *cfg["step"]) for v in vs}
    return ratios(measure(cases, cfg["step_rounds"], 0.0, k=1), ref)


def temp_bytes(act, dtype, depth, width, batch) -> int:
    return int(
        mlp_temp_bytes(act, jnp.dtype(dtype), depth=depth, width=width, batch=batch, bias=True)
    )


_OPCODE = re.compile(r"=\s*[a-z0-9]+\[[^\]]*\](?:\{[^}]*\})?\s+([a-z][a-z0-9-]*)\(")
TRANSCENDENTAL = (
    "exponential exponential-minus-one log log-plus-one sine cosine tanh logistic power divide"
    " sqrt rsqrt"
).split()
STRUCTURAL = {"parameter", "constant", "broadcast", "tuple", "get-tuple-element", "fusion"}


def hlo_counts(fn, n: int = 4096) -> dict:
    """Op counts in the optimised HLO of the float32 fwd+bwd."""
    x = jnp.linspace(-8, 8, n, dtype=jnp.float32)
    ops = _OPCODE.findall(jax.jit(fwd_bwd(fn)).lower(x, x).compile().as_text())
    tr = {op: ops.count(op) for op in TRANSCENDENTAL if op in ops}
    return {
        "transcendental": tr,
        "elementwise_ops": sum(o not in STRUCTURAL for o in ops),
        "fusions": ops.count("fusion"),
    }


def _summary(a, r, scale, dtype: str) -> dict:
    """Max and 99.9th-percentile ulps (of ``scale``) where result and reference are finite;
    non-finite results where the reference is finite are counted apart."""
    a = np.asarray(a).astype(np.float64)
    bad = np.isfinite(r) & ~np.isfinite(a)
    ok = np.isfinite(r) & np.isfinite(a)
    err = ulp_error(a[ok], r[ok], dtype, scale=scale[ok])
    return {
        "max_ulp": float(err.max(initial=0.0)),
        "p99_9_ulp": float(np.percentile(err, 99.9)) if err.size else 0.0,
        "nonfinite_points": int(bad.sum()),
        "points": int(np.isfinite(r).sum()),
    }


def accuracy(entry, vs, torch, dtype: str, n: int) -> dict:
    """Forward and gradient (cotangent 1) against the entry's float64 references, in ulps of
    its forward_scale and scale (as tests/test_activations.py)."""
    x = sweep(dtype, n=n, limit=entry.sweep_limit)
    x64 = x.astype(np.float64)
    # XLA on CPU reads subnormal inputs as zero, for every kernel alike: leave them out.
    keep = (x64 == 0) | (np.abs(x64) >= float(ml_dtypes.finfo(np_dtype(dtype)).tiny))
    x, x64 = x[keep], x64[keep]
    with np.errstate(all="ignore"):
        ref_y, ref_g = entry.reference(x64), entry.derivative(x64)
        scale_y, scale_g = entry.forward_scale(x64), entry.scale(x64)
    out = {}
    for v in vs:
        if v.kind == "torch":
            xt = torch.from_numpy(x64.astype(np.float32)).to(getattr(torch, dtype))
            xt.requires_grad_(True)
            try:
                yt = v.fn(xt)
                (gt,) = torch.autograd.grad(yt, xt, torch.ones_like(yt))
            except RuntimeError:  # a dtype torch's CPU build lacks the kernel for: no row
                continue
            y, g = (t.detach().to(torch.float64).numpy() for t in (yt, gt))
        else:
            y, g = jax.jit(fwd_bwd(v.fn))(jnp.asarray(x), jnp.ones(x.shape, x.dtype))
        out[v.key] = {
            "forward": _summary(y, ref_y, scale_y, dtype),
            "gradient": _summary(g, ref_g, scale_g, dtype),
        }
    return out


def code_error(entry, v, dtype: str, n: int) -> dict:
    """A slope-code row's decoded slope (cotangent 1) against the entry's float64 derivative,
    on N(0, 1) inputs (issue 15's yardstick): max and RMS error, and the bound
    ``(max - min) / (2**bits - 1)`` over the finite reference slopes with max error / bound."""
    bits = int(v.key.split("_")[1])
    x = np.random.default_rng(n + bits).normal(size=n).astype(np_dtype(dtype))
    x64 = x.astype(np.float64)
    _, g = jax.jit(fwd_bwd(v.fn))(jnp.asarray(x), jnp.ones(x.shape, x.dtype))
    d = entry.derivative(x64)
    ok = np.isfinite(d)
    err = np.abs(np.asarray(g).astype(np.float64)[ok] - d[ok])
    bound = (d[ok].max() - d[ok].min()) / (2**bits - 1)
    return {
        "bits": bits,
        "max_abs": float(err.max()),
        "rms": float(np.sqrt(np.mean(err**2))),
        "bound": float(bound),
        "of_bound": float(err.max() / bound) if bound > 0 else 0.0,
        "points": int(ok.sum()),
    }
