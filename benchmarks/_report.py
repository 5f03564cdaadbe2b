"""Goals, the markdown tables and the plots, all computed from the results dict."""

from __future__ import annotations

import math
import os

MIB = 1 << 20
BIG = 1 << 16  # sizes from here on are not dominated by dispatch overhead


def _geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _rows(res, fam, dtype, kind):
    return [
        r
        for r in res["kernel_time"]
        if r["family"] == fam and r["dtype"] == dtype and r["pass"] == kind
    ]


def _ratio_summary(res, fam, dtype, kind, key):
    rows = _rows(res, fam, dtype, kind)
    big = [r for r in rows if r["elements"] >= BIG] or rows
    ratios = [r["results"][key]["ratio"] for r in big]
    last = big[-1]
    return {
        "geomean": _geo(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "from_elements": big[0]["elements"],
        "largest": last["elements"],
        "at_largest": last["results"][key]["ratio"],
        "of_bound_at_largest": last["results"][key]["of_bound"],
    }


def _exp2(n):
    return f"2^{int(round(math.log2(n)))}"


def _time_evidence(res, fam, dtype, key, ref):
    """Why a time ratio is what it is: bandwidth fraction, HLO op counts, op-level cost."""
    s = _ratio_summary(res, fam, dtype, "fwd_bwd", key)
    rs = _ratio_summary(res, fam, dtype, "fwd_bwd", ref)
    hlo = res["evidence"]["hlo_fwd_bwd_float32"]
    ops = res["evidence"]["op_time"]["results"]
    op_txt = ", ".join(f"{k} {v['ns_per_element']:.2f}" for k, v in ops.items())
    frac = s["of_bound_at_largest"]
    bound_txt = "so it is compute-bound, not bandwidth-bound" if frac < 0.5 else "near the limit"
    same = hlo[key]["transcendental"] == hlo[ref]["transcendental"]
    txt = (
        f"At {_exp2(s['largest'])} the kernel reaches {frac:.2f} of the measured bandwidth "
        f"bound ({rs['of_bound_at_largest']:.2f} for the reference), {bound_txt}. Optimized "
        f"HLO of the float32 fwd+bwd: {hlo[key]['transcendental']} "
        f"({hlo[key]['elementwise_ops']} elementwise ops, {hlo[key]['fusions']} fusions) vs the "
        f"reference's {hlo[ref]['transcendental']} ({hlo[ref]['elementwise_ops']} elementwise "
        f"ops, {hlo[ref]['fusions']} fusions). Op-level cost, ns per float32 element: {op_txt}."
    )
    small = [r for r in _rows(res, fam, dtype, "fwd_bwd") if r["elements"] < BIG]
    if small and hlo[key]["elementwise_ops"] > 1.5 * hlo[ref]["elementwise_ops"]:
        g = _geo([r["results"][key]["ratio"] for r in small])
        txt += (
            f" The kernel has {hlo[key]['elementwise_ops'] / hlo[ref]['elementwise_ops']:.1f}x "
            "the reference's elementwise ops; where the data sit in cache and arithmetic "
            f"dominates ({_exp2(small[0]['elements'])}..{_exp2(small[-1]['elements'])}) its "
            f"ratio is {g:.2f}x."
        )
    if same:
        txt += (
            " Both evaluate the same transcendental ops: in an isolated jitted fwd+bwd XLA "
            "fuses the forward and the backward into loops that recompute from x, so the "
            "residual policy changes what a training step stores, not what this benchmark "
            f"computes; the transcendental cost sets both times, so the ratio stays near 1 "
            f"({s['geomean']:.2f}x here). The lever is the transcendental count per element, "
            "not the residual."
        )
    return txt


def goals(res) -> list[dict]:
    out = []
    kt_dtypes = sorted({r["dtype"] for r in res["kernel_time"]}, key=["float32", "bfloat16"].index)

    def add(gid, goal, measured, target, holds, detail, noise=None):
        if noise is not None:
            resolved = abs(measured - target) > noise
            detail += (
                f" A/A noise floor of this statistic: +-{noise:.2f} (the same statistic for "
                "flax.linen.softplus vs jax.nn.softplus, one function); the margin to the target "
                "is "
                + ("larger, so the verdict is resolved." if resolved else "smaller: not resolved.")
            )
        out.append(
            {
                "id": gid,
                "goal": goal,
                "measured": measured,
                "target": target,
                "holds": bool(holds),
                "noise_floor": noise,
                "detail": detail,
            }
        )

    def kernel_noise(dtype):
        rows = _rows(res, "softplus", dtype, "fwd_bwd")
        big = [r for r in rows if r["elements"] >= BIG] or rows
        if not big or "flax_linen_softplus" not in big[0]["results"]:
            return None
        # The same statistic as the goal (geometric mean over the same sizes) for A vs A.
        return abs(_geo([r["results"]["flax_linen_softplus"]["ratio"] for r in big]) - 1)

    def unresolved(measured, noise):
        return noise is not None and abs(measured - 1.0) <= noise

    # 1. softplus fwd+bwd time.
    for key, name in [
        ("ours_softplus_output", "softplus residual=output (default)"),
        ("ours_softplus_input_seed000", "stable_log1pexp (residual=input)"),
    ]:
        for dtype in kt_dtypes:
            s = _ratio_summary(res, "softplus", dtype, "fwd_bwd", key)
            holds = s["geomean"] <= 1.0
            detail = (
                f"geometric mean over {_exp2(s['from_elements'])}..{_exp2(s['largest'])}: "
                f"{s['geomean']:.2f}x (range {s['min']:.2f}-{s['max']:.2f}x; "
                f"{s['at_largest']:.2f}x at {_exp2(s['largest'])})."
            )
            if not holds or unresolved(s["geomean"], kernel_noise(dtype)):
                detail += " " + _time_evidence(res, "softplus", dtype, key, "jax_nn_softplus")
            add(
                f"softplus_time_{key}_{dtype}",
                f"{name} fwd+bwd time <= 1.0x jax.nn.softplus ({dtype})",
                s["geomean"],
                1.0,
                holds,
                detail,
                kernel_noise(dtype),
            )

    # 2. MLP temp memory at depth 8, both modes.
    temp = res["mlp_temp"]["temp_bytes"]
    d = "8"
    for key in ("ours_softplus_output", "ours_softplus_output_jvp"):
        r_sp = temp[key][d] / temp["jax_nn_softplus"][d]
        r_id = temp[key][d] / temp["identity"][d]
        add(
            f"mlp_temp_vs_softplus_{key}",
            f"MLP step temp memory, depth 8, {res['variants'][key]['label']}: "
            "<= 0.7x jax.nn.softplus",
            r_sp,
            0.7,
            r_sp <= 0.7,
            f"{temp[key][d] / MIB:.1f} MiB vs {temp['jax_nn_softplus'][d] / MIB:.1f} MiB.",
        )
        add(
            f"mlp_temp_vs_identity_{key}",
            f"MLP step temp memory, depth 8, {res['variants'][key]['label']}: <= 1.05x identity",
            r_id,
            1.05,
            r_id <= 1.05,
            f"{temp[key][d] / MIB:.1f} MiB vs {temp['identity'][d] / MIB:.1f} MiB.",
        )

    # 3. MLP step time.
    st = res["mlp_step"]["results"]
    r = st["ours_softplus_output"]["ratio"]
    step_noise = (
        abs(st["flax_linen_softplus"]["ratio"] - 1) if "flax_linen_softplus" in st else None
    )
    add(
        "mlp_step_time",
        "MLP step time (depth 8), softplus residual=output: <= 1.05x jax.nn.softplus",
        r,
        1.05,
        r <= 1.05,
        f"{st['ours_softplus_output']['median_s'] * 1e3:.1f} ms vs "
        f"{st['jax_nn_softplus']['median_s'] * 1e3:.1f} ms (identity "
        f"{st['identity']['median_s'] * 1e3:.1f} ms); the matmuls dominate the step.",
        step_noise,
    )

    # 4. x*sin(x) fwd+bwd time, and the ratio to torch.
    for dtype in kt_dtypes:
        s = _ratio_summary(res, "xsin", dtype, "fwd_bwd", "ours_xsin_derivative")
        detail = (
            f"geometric mean over {_exp2(s['from_elements'])}..{_exp2(s['largest'])}: "
            f"{s['geomean']:.2f}x (range {s['min']:.2f}-{s['max']:.2f}x)."
        )
        rows = _rows(res, "xsin", dtype, "fwd_bwd")
        if rows and "torch_xsin" in rows[0]["results"]:
            big = [r for r in rows if r["elements"] >= BIG] or rows
            ours_t = _geo(
                [
                    r["results"]["ours_xsin_derivative"]["median_s"]
                    / r["results"]["torch_xsin"]["median_s"]
                    for r in big
                ]
            )
            torch_ad = _geo([r["results"]["torch_xsin"]["ratio"] for r in big])
            detail += (
                f" Against torch autograd: ours {ours_t:.2f}x torch; torch is {torch_ad:.2f}x "
                "JAX autodiff."
            )
        else:
            detail += " torch not measured in this run."
        holds = s["geomean"] <= 1.0
        if not holds or unresolved(s["geomean"], kernel_noise(dtype)):
            detail += " " + _time_evidence(
                res, "xsin", dtype, "ours_xsin_derivative", "autodiff_xsin"
            )
        add(
            f"xsin_time_{dtype}",
            f"xsin residual=derivative fwd+bwd time <= 1.0x autodiff x*sin(x) ({dtype})",
            s["geomean"],
            1.0,
            holds,
            detail,
            kernel_noise(dtype),
        )

    # 5. Accuracy never worse than jax.nn.softplus.
    acc = res["accuracy"]
    for key in ("ours_softplus_output", "ours_softplus_input_seed000", "ours_softplus_output_jvp"):
        worst, worse = 0.0, []
        for dtype, by in acc.items():
            for part in ("forward", "gradient"):
                ours, ref = by[key][part], by["jax_nn_softplus"][part]
                ratio = (ours["max_ulp"] + 1e-12) / (ref["max_ulp"] + 1e-12)
                worst = max(worst, ratio)
                if (
                    ours["max_ulp"] > ref["max_ulp"]
                    or ours["nonfinite_points"] > ref["nonfinite_points"]
                ):
                    worse.append(
                        f"{dtype} {part}: {ours['max_ulp']:.2f} vs {ref['max_ulp']:.2f} ulp"
                    )
        add(
            f"accuracy_{key}",
            f"{res['variants'][key]['label']}: max ulp error <= jax.nn.softplus, every dtype",
            worst,
            1.0,
            not worse,
            "worst ratio of max ulp errors (ours / jax.nn.softplus) over dtypes and "
            f"forward/gradient: {worst:.2f}."
            + (" Worse in: " + "; ".join(worse) + "." if worse else ""),
        )
    return out


def noise_floor(res) -> list[str]:
    """Ratios of flax.linen.softplus (identical to jax.nn.softplus): the measurement noise."""
    key, out = "flax_linen_softplus", []
    for dtype in ("float32", "bfloat16"):
        rows = _rows(res, "softplus", dtype, "fwd_bwd")
        if rows and key in rows[0]["results"]:
            s = _ratio_summary(res, "softplus", dtype, "fwd_bwd", key)
            out.append(
                f"kernel fwd+bwd {dtype}: geometric mean {s['geomean']:.2f}x, range "
                f"{s['min']:.2f}-{s['max']:.2f}x over {_exp2(s['from_elements'])}.."
                f"{_exp2(s['largest'])}"
            )
    st = res["mlp_step"]["results"]
    if key in st:
        out.append(f"MLP step {st[key]['ratio']:.3f}x")
    return out


# ----------------------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------------------


def _fmt_time(s):
    if s >= 1e-1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _label(res, key):
    return res["variants"][key]["label"]


def markdown(res) -> str:
    m = res["meta"]
    mach = m["machine"]
    v = mach["versions"]
    L = []
    L.append("# stable_layers benchmarks\n")
    L.append(
        f"{m['date_utc']} · `{m['command']}` ({m['mode']} run, {m['duration_s'] / 60:.1f} min) · "
        f"{mach['cpu']}, {mach['cores']} cores · backend {mach['backend']} · jax {v['jax']}, "
        f"jaxlib {v['jaxlib']}, flax {v['flax']}, torch {v['torch']} · load average at "
        f"start/end {m['load_average_1_5_15_start'][0]:.2f}/{m['load_average_1_5_15_end'][0]:.2f}"
        f" (shared machine).\n\n{mach['torch']}.\n"
    )
    src = m.get("stable_layers_source")
    if src:
        dirty = src["uncommitted_changes"]
        L.append(
            f"stable_layers measured at commit `{src['git_commit'][:12]}`"
            + (f", with uncommitted changes: {', '.join(dirty)}" if dirty else " (clean)")
            + ".\n"
        )

    L.append("## Goals\n")
    L.append(
        "| goal | measured | target | holds | margin beyond the A/A noise floor |\n"
        "|---|---|---|---|---|"
    )
    for g in res["goals"]:
        nf = g.get("noise_floor")
        res_txt = (
            "-"
            if nf is None
            else (
                f"yes (±{nf:.2f})" if abs(g["measured"] - g["target"]) > nf else f"no (±{nf:.2f})"
            )
        )
        L.append(
            f"| {g['goal']} | {g['measured']:.2f}x | {g['target']:.2f}x | "
            f"{'yes' if g['holds'] else '**no**'} | {res_txt} |"
        )
    L.append("")
    for g in res["goals"]:
        L.append(f"- **{g['goal']}** — {'holds' if g['holds'] else 'does not hold'}: {g['detail']}")
    L.append("")

    noise = noise_floor(res)
    if noise:
        L.append(
            "Noise floor (an A/A control): `flax.linen.softplus` is the same function object as "
            "`jax.nn.softplus`, so any departure of its ratio from 1.00 is measurement noise. "
            + "; ".join(noise)
            + ". Read the time ratios above with that spread in mind.\n"
        )

    # Kernel time.
    L.append("## Kernel time\n")
    L.append(
        "Median per call; in each cell: time · ratio to the family's reference "
        "(`jax.nn.softplus`, autodiff `x*jnp.sin(x)`) · fraction of the measured bandwidth "
        "bound. Every size is in results.json and scaling.png.\n"
    )
    sizes_all = sorted({r["elements"] for r in res["kernel_time"]})
    show = [n for n in sizes_all if round(math.log2(n)) % 4 == 0] or sizes_all
    for fam in ("softplus", "xsin"):
        for kind in ("fwd_bwd", "fwd"):
            for dtype in ("float32", "bfloat16"):
                rows = [r for r in _rows(res, fam, dtype, kind) if r["elements"] in show]
                if not rows:
                    continue
                title = "forward+backward" if kind == "fwd_bwd" else "forward"
                L.append(f"### {fam}, {title}, {dtype}\n")
                L.append("| variant | " + " | ".join(_exp2(r["elements"]) for r in rows) + " |")
                L.append("|---" * (len(rows) + 1) + "|")
                for key in rows[0]["results"]:
                    cells = [
                        f"{_fmt_time(r['results'][key]['median_s'])} · "
                        f"{r['results'][key]['ratio']:.2f}x · {r['results'][key]['of_bound']:.2f}"
                        for r in rows
                    ]
                    L.append(f"| {_label(res, key)} | " + " | ".join(cells) + " |")
                cells = [
                    f"{_fmt_time(r['bound']['median_s'])} ({r['bound']['gbytes_per_s']:.1f} GB/s)"
                    for r in rows
                ]
                L.append("| *bound: jitted x\\*c* | " + " | ".join(cells) + " |")
                L.append("")

    # Residuals.
    L.append("## Residuals kept for the backward pass\n")
    L.append("| activation | arrays | bytes per element (float32) | what |\n|---|---|---|---|")
    for key, r in res["residuals"].items():
        L.append(
            f"| {_label(res, key)} | {r['arrays']} | {r['bytes_per_element']:.0f} | "
            f"{'; '.join(r['what'])} |"
        )
    L.append("")

    # MLP temp memory.
    mt = res["mlp_temp"]
    L.append(
        f"## MLP training step: compiled temp memory vs depth (width {mt['width']}, "
        f"batch {mt['batch']})\n"
    )
    depths = [str(d) for d in mt["depths"]]
    L.append(
        "| activation | "
        + " | ".join(f"depth {d} (MiB)" for d in depths)
        + " | depth 8 / jax.nn.softplus | depth 8 / identity |"
    )
    L.append("|---" * (len(depths) + 3) + "|")
    t = mt["temp_bytes"]
    for key, by in t.items():
        L.append(
            f"| {_label(res, key)} | "
            + " | ".join(f"{by[d] / MIB:.1f}" for d in depths)
            + f" | {by['8'] / t['jax_nn_softplus']['8']:.2f} | {by['8'] / t['identity']['8']:.2f} |"
        )
    L.append("")

    # MLP step time and RSS.
    ms, mr = res["mlp_step"], res["mlp_rss"]
    L.append(
        f"## MLP training step (depth {ms['depth']}, width {ms['width']}, batch {ms['batch']}): "
        "time and peak RSS\n"
    )
    L.append(
        "| activation | step time | ratio to jax.nn.softplus | step RSS increase (MiB) | "
        "peak RSS (MiB) |\n|---|---|---|---|---|"
    )
    for key, r in ms["results"].items():
        rr = mr["results"][key]
        L.append(
            f"| {_label(res, key)} | {_fmt_time(r['median_s'])} | {r['ratio']:.3f} | "
            f"{rr['step_rss_increase_kib'] / 1024:.1f} | {rr['peak_rss_kib'] / 1024:.0f} |"
        )
    L.append("")

    # Accuracy.
    L.append("## Accuracy: max error in ulps vs a float64 reference\n")
    L.append(
        "forward / gradient max ulp (99.9th percentile in brackets); `nonfinite` counts points "
        "where the result is inf/NaN but the reference is finite.\n"
    )
    acc = res["accuracy"]
    dtypes = list(acc)
    L.append(
        "| variant | "
        + " | ".join(f"{d} forward | {d} gradient" for d in dtypes)
        + " |\n"
        + "|---" * (2 * len(dtypes) + 1)
        + "|"
    )
    for key in acc[dtypes[0]]:
        cells = []
        for d in dtypes:
            for part in ("forward", "gradient"):
                a = acc[d][key][part]
                c = f"{a['max_ulp']:.2f} ({a['p99_9_ulp']:.2f})"
                if a["nonfinite_points"]:
                    c += f", nonfinite {a['nonfinite_points']}"
                cells.append(c)
        L.append(f"| {_label(res, key)} | " + " | ".join(cells) + " |")
    L.append("")

    # Evidence.
    L.append("## Evidence: HLO op counts (float32 fwd+bwd) and op-level timing\n")
    L.append("| activation | transcendental ops | elementwise ops | fusions |\n|---|---|---|---|")
    for key, h in res["evidence"]["hlo_fwd_bwd_float32"].items():
        tr = ", ".join(f"{k} {n}" for k, n in h["transcendental"].items()) or "-"
        L.append(f"| {_label(res, key)} | {tr} | {h['elementwise_ops']} | {h['fusions']} |")
    ot = res["evidence"]["op_time"]
    L.append(f"\nSingle ops on {_exp2(ot['elements'])} float32 elements (one in, one out):\n")
    L.append("| op | ns per element |\n|---|---|")
    for k, r in ot["results"].items():
        L.append(f"| {k} | {r['ns_per_element']:.3f} |")
    L.append("")

    L.append("## Method\n")
    L.append(m["method"])
    L.append(f"\nAllocator: {m['allocator']}.\n")
    L.append(f"Rerun: `{m['command']}` (writes results.json, results.md and the plots).\n")
    return "\n".join(L)


# ----------------------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------------------


def plots(res, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    dtypes = [d for d in ("float32", "bfloat16") if _rows(res, "softplus", d, "fwd_bwd")]
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4.5 * len(dtypes)), squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, fam in enumerate(("softplus", "xsin")):
            ax = axes[i][j]
            rows = _rows(res, fam, dtype, "fwd_bwd")
            ns = [r["elements"] for r in rows]
            for key in rows[0]["results"]:
                ts = [r["results"][key]["median_s"] for r in rows]
                style = "-" if res["variants"][key]["ours"] else "--"
                ax.loglog(ns, ts, style, marker="o", ms=3, label=_label(res, key))
            ax.loglog(ns, [r["bound"]["median_s"] for r in rows], ":", color="k", label="bound")
            ax.set_title(f"{fam} forward+backward, {dtype}")
            ax.set_xlabel("elements")
            ax.set_ylabel("seconds per call (median)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "scaling.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)

    mt = res["mlp_temp"]
    ds = mt["depths"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    markers = "osD^vP*Xh"
    for ax, fam in zip(axes, ("softplus", "xsin"), strict=True):
        keys = ["identity"] + [k for k in mt["temp_bytes"] if res["variants"][k]["family"] == fam]
        for i, key in enumerate(keys):
            by = mt["temp_bytes"][key]
            style = ":" if key == "identity" else "-" if res["variants"][key]["ours"] else "--"
            # Lines that coincide stay visible: each later one is drawn thinner, on top.
            ax.plot(
                ds,
                [by[str(d)] / MIB for d in ds],
                style,
                marker=markers[i % len(markers)],
                ms=9 - i,
                lw=3.5 - 0.4 * i,
                label=_label(res, key),
            )
        ax.set_xlabel("depth")
        ax.set_title(f"{fam}: MLP step, width {mt['width']}, batch {mt['batch']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("compiled temp memory (MiB)")
    fig.tight_layout()
    path = os.path.join(out_dir, "memory_depth.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files
