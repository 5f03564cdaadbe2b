"""Refresh the documentation's figures in docs/assets/ (their output is committed).

    python docs/make_figures.py

* copies the figures the site shows from where they are made: the training example's loss
  plot (examples/figures/) and the benchmark plots (benchmarks/*.png, written by
  ``python benchmarks/run.py``); tests/test_docs.py checks that the copies are current;
* draws docs/assets/accuracy_ulp.png from benchmarks/results.json (schema 2 or 3): the max error in
  ulps of each softplus, log_sigmoid and x·sin(x) variant but the naive ones (non-finite),
  forward and gradient, per dtype (bars), and the 99.9th percentile (dots).

Run it after rerunning the benchmarks or the examples. Needs matplotlib (the `examples`
extra); no JAX.
"""

from __future__ import annotations

import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASSETS = ROOT / "docs" / "assets"

# docs/assets/<name>: its source in the repository.
COPIES = {
    "loss_float16_digits_equinox.png": "examples/figures/loss_float16_digits_equinox.png",
    "memory_budget_float32.png": "examples/figures/memory_budget_float32.png",
    "memory_depth.png": "benchmarks/memory_depth.png",
    "scaling.png": "benchmarks/scaling.png",
}

# The variants of the accuracy figure, per registry entry, in the order of the bars, with
# their colours: keys of results.json's entries[entry]["variants"] and accuracy[dtype][entry].
# "ours_jvp" is left out: its figures are those of the default policy.
ACCURACY_VARIANTS = {
    "softplus": [
        ("peer", "tab:orange"),
        ("ours_output", "tab:green"),
        ("ours_input", "tab:olive"),
        ("torch", "tab:gray"),
    ],
    "log_sigmoid": [
        ("peer", "tab:orange"),
        ("ours_output", "tab:green"),
        ("ours_input", "tab:olive"),
        ("torch", "tab:gray"),
    ],
    "xsin": [
        ("naive", "tab:orange"),
        ("ours_derivative", "tab:green"),
        ("ours_input_and_sin", "tab:purple"),
        ("ours_input", "tab:olive"),
        ("torch", "tab:gray"),
    ],
}
DTYPES = ("float32", "bfloat16", "float16")


def copy_figures() -> None:
    for name, source in COPIES.items():
        shutil.copyfile(ROOT / source, ASSETS / name)
        print(f"docs/assets/{name}  <- {source}")


def accuracy_figure(results: dict, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schema = results.get("schema")
    if schema not in ("stable_layers.benchmarks/2", "stable_layers.benchmarks/3"):
        raise SystemExit(f"benchmarks/results.json has schema {schema!r}; this script reads 2, 3")
    accuracy, entries = results["accuracy"], results["entries"]
    groups = [(dtype, which) for dtype in DTYPES for which in ("forward", "gradient")]
    top = max(
        accuracy[dtype][family][key][which]["max_ulp"]
        for family, variants in ACCURACY_VARIANTS.items()
        for key, _ in variants
        for dtype, which in groups
    )
    fig, axes = plt.subplots(1, len(ACCURACY_VARIANTS), figsize=(17, 5.4), sharey=True)
    for ax, (family, variants) in zip(axes, ACCURACY_VARIANTS.items()):
        width = 0.8 / len(variants)
        for i, (key, colour) in enumerate(variants):
            xs = [g + (i - (len(variants) - 1) / 2) * width for g in range(len(groups))]
            cells = [accuracy[dtype][family][key][which] for dtype, which in groups]
            max_ulp = [c["max_ulp"] for c in cells]
            p999 = [c["p99_9_ulp"] for c in cells]
            label = entries[family]["variants"][key]["label"]
            ax.bar(xs, max_ulp, width, color=colour, label=label)
            ax.plot(xs, p999, "o", color="black", markersize=3)
        ax.set_yscale("log")
        ax.set_ylim(0.3, 2 * top)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{dtype}\n{which}" for dtype, which in groups], fontsize=8)
        ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(f"{family}: max error (bars), 99.9th percentile (dots)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[0].set_ylabel("error in ulps vs a float64 reference")
    meta = results["meta"]
    fig.suptitle(
        f"{meta['command']} ({meta['date_utc']}, commit {meta['git_commit'][:7]}, "
        f"{meta['machine']['backend']}); "
        "dotted line: 0.5 ulp, correct rounding",
        fontsize=9,
    )
    fig.tight_layout()
    # No software/date metadata: the PNG changes only when the data do.
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"docs/assets/{out.name}  <- benchmarks/results.json")


def main() -> None:
    ASSETS.mkdir(exist_ok=True)
    copy_figures()
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    accuracy_figure(results, ASSETS / "accuracy_ulp.png")


if __name__ == "__main__":
    main()
