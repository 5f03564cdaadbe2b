"""Interleaved timing that survives a noisy shared machine.

Method: every case of a group is compiled and warmed up, then the group is run in rounds,
each round timing every case once (A B C, C A B, ...; a fresh seeded shuffle each round, so
no case always follows the same neighbour: torch's OpenMP threads spin for a while after a
call, and a fixed order would charge that to whichever case comes next). A sample is ``k``
back-to-back calls followed by one sync, divided by ``k``; one ``k`` for all cases of a
group, chosen so a sample lasts about ``target_s``. The figure is the median over rounds;
ratios are taken between medians of the same group, so load that comes and goes hits every
case alike.

Allocation is kept out of the timed region: JAX cases write their outputs into donated
buffers (the outputs of the previous call), and the process's malloc is told not to return
freed memory to the OS (``mallopt``), so torch's fresh tensors do not page-fault every call.
"""

from __future__ import annotations

import ctypes
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


def keep_freed_memory() -> str:
    """Stop glibc from unmapping freed large blocks, so re-allocation reuses warm pages."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 34)
        return "glibc mallopt: mmap threshold 1 GiB, trim threshold 16 GiB" if ok else "none"
    except OSError:
        return "none (not glibc)"


@dataclass
class Case:
    call: Callable[[], None]  # one call; later calls may depend on earlier ones
    sync: Callable[[], None]  # waits for everything issued so far


def jax_case(f: Callable, args: tuple, n_out: int) -> Case:
    """``f(*args)`` returning ``n_out`` arrays like ``args[0]``, written into donated buffers."""
    n_in = len(args)

    def wrapped(*a):
        return f(*a[:n_in])

    jf = jax.jit(wrapped, donate_argnums=tuple(range(n_in, n_in + n_out)), keep_unused=True)
    state = [tuple(jnp.zeros_like(args[0]) for _ in range(n_out))]

    def call():
        out = jf(*args, *state[0])
        state[0] = out if isinstance(out, tuple) else (out,)

    def sync():
        jax.block_until_ready(state[0])

    return Case(call, sync)


def fwd(f):
    return f


def fwd_bwd(f):
    """x, g -> (f(x), vjp(g)): forward and backward as in a training step."""

    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return run


def torch_case(torch, f: Callable, x, g, kind: str) -> Case:
    state = [None]
    if kind == "fwd":

        def call():
            with torch.no_grad():
                state[0] = f(x)

    else:

        def call():
            xr = x.detach().requires_grad_(True)
            y = f(xr)
            (dx,) = torch.autograd.grad(y, xr, g)
            state[0] = (y, dx)

    return Case(call, lambda: None)


def measure(
    cases: dict[str, Case], rounds: int, target_s: float, fixed_k: int | None = None
) -> dict[str, dict]:
    """Median seconds per call of each case, measured interleaved. Also the IQR and k.

    ``fixed_k`` skips the calibration (for cases that take far longer than ``target_s``).
    """
    names = list(cases)
    calib = []
    for name in names:  # warm-up (compiles) and calibration of k
        c = cases[name]
        c.call()
        c.sync()
        if fixed_k is None:
            t0 = time.perf_counter()
            c.call()
            c.sync()
            calib.append(max(time.perf_counter() - t0, 1e-7))
    # One k for the whole group: cases compared with each other amortize the dispatch and
    # sync overhead alike.
    kk = fixed_k or max(1, min(10_000, math.ceil(target_s / statistics.median(calib))))
    k = dict.fromkeys(names, kk)
    samples = {name: [] for name in names}
    rng = random.Random(len(names) * 1_000_003 + rounds)
    for _ in range(rounds):
        order = rng.sample(names, len(names))
        for name in order:
            c = cases[name]
            t0 = time.perf_counter()
            for _ in range(k[name]):
                c.call()
            c.sync()
            samples[name].append((time.perf_counter() - t0) / k[name])
    out = {}
    for name in names:
        s = samples[name]
        q = np.percentile(s, [25, 75])
        out[name] = {
            "median_s": statistics.median(s),
            "iqr_s": float(q[1] - q[0]),
            "calls_per_sample": k[name],
            "rounds": rounds,
        }
    return out
