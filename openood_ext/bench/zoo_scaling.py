"""``openood-ext bench zoo-scaling``: how the postprocessor zoo's cost grows with the ID-train set, measured
in one run: fit on N ID-train outputs (+ a fixed ID-val set) and score a fixed test set, for each N.

    openood-ext bench zoo-scaling [--sizes 1000 2000 5000 10000 20000 50000] [--dim 512] [--classes 10]
                                  [--test 2000] [--only knn mds ...] [--png docs/bench/zoo_scaling.png]

Outputs are synthetic, shaped like a CIFAR-10 ResNet-18's (512-d non-negative penultimate features: a
class mean plus Gaussian noise through a ReLU; logits from one random linear layer, which is also the
``fc_weight``/``fc_bias`` the methods read). The forward pass is not part of the cost (the shared cache
computes it once for the whole zoo); only the methods' own fit + score is timed per size, after one
untimed warm-up at the smallest size: the minimum of up to ``--repeats`` runs (fewer once they add up to
``--repeat-cap`` seconds), the least disturbed one on a shared machine. Every feature-space postprocessor (``needs_network`` false, no
layer taps) runs at its defaults; one that fails on these outputs is listed with its error.

Per method: seconds per size, and the growth exponent ``b`` of ``time ~ N^b`` fitted (least squares in
log-log) over the sizes >= 5000 (the smaller ones are dominated by constant costs).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from ..features import NetOutputs
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.schedule import FixedSource, Scheduler, route
from ..utils.io import write_json, write_with


def synthetic_outputs(n: int, dim: int, classes: int, fc: tuple, seed: int) -> NetOutputs:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(12345)).abs()
    feats = torch.relu(means[labels] + 0.7 * torch.randn(n, dim, generator=g))
    weight, bias = fc
    return NetOutputs(feats @ weight.T + bias, feats, labels, {"fc_weight": weight, "fc_bias": bias})


def zoo_methods(only=None) -> list[str]:
    """The toolkit's own postprocessors that the scheduler runs from cached outputs alone (a duck-typed
    plugin may lack needs_network / uses_taps, so only ``openood_ext`` methods are considered)."""
    names = [n for n in POSTPROCESSORS.names() if POSTPROCESSORS.get(n).__module__.startswith("openood_ext.")
             and route(POSTPROCESSORS.get(n)) == "outputs"]
    return [n for n in names if n in only] if only else names


def growth_exponent(sizes, seconds, min_size: int = 5000) -> float | None:
    pts = [(math.log(n), math.log(max(s, 1e-6))) for n, s in zip(sizes, seconds) if n >= min_size and s is not None]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def bench_zoo_scaling(sizes=(1000, 2000, 5000, 10000, 20000, 50000), dim: int = 512, classes: int = 10,
                      test: int = 2000, only=None, repeats: int = 3, repeat_cap_s: float = 2.0) -> dict:
    g = torch.Generator().manual_seed(7)
    fc = (torch.randn(classes, dim, generator=g) / math.sqrt(dim), torch.randn(classes, generator=g) * 0.1)
    val = synthetic_outputs(1000, dim, classes, fc, seed=1)
    test_out = synthetic_outputs(test, dim, classes, fc, seed=2)
    trains = {n: synthetic_outputs(n, dim, classes, fc, seed=3) for n in sizes}
    rows = []
    for name in zoo_methods(only):
        row = {"postprocessor": name, "seconds": {}, "error": ""}
        try:
            def fit_and_score(n: int, name: str = name) -> float:  # one scheduler run on the fixed outputs, its fit + score
                source = FixedSource({"id_train": trains[n], "id_val": val, "id_test": test_out})
                sched = Scheduler({name: POSTPROCESSORS.build({"name": name})}, source)
                return sched.run(["id_test"]).seconds[name]

            fit_and_score(sizes[0])  # warm-up
            for n in sizes:
                runs = []
                while len(runs) < repeats and sum(runs) < repeat_cap_s:  # min of up to `repeats` runs
                    runs.append(fit_and_score(n))
                row["seconds"][n] = min(runs)
        except Exception as exc:  # noqa: BLE001  a method that cannot run on generic outputs is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        row["exponent"] = growth_exponent(list(row["seconds"]), list(row["seconds"].values())) if row["seconds"] else None
        rows.append(row)
        print(f"  {name}: " + (", ".join(f"{n}: {s:.3f}s" for n, s in row["seconds"].items()) or row["error"]), flush=True)
    return {"sizes": list(sizes), "dim": dim, "classes": classes, "test": test, "val": 1000, "rows": rows,
            "repeats": repeats, "repeat_cap_s": repeat_cap_s,
            "threads": torch.get_num_threads()}


def growth_label(b: float | None, largest_s: float) -> str:
    if b is None:
        return "-"
    if largest_s < 0.05:
        return "negligible (< 50 ms at every N)"
    if b < 0.25:
        return "flat (constant-dominated)"
    if b < 0.8:
        return "sub-linear"
    if b < 1.25:
        return "linear"
    return "super-linear"


def markdown_table(r: dict) -> str:
    sizes = r["sizes"]
    head = "| postprocessor | " + " | ".join(f"N={n:,} (s)" for n in sizes) + " | exponent b (N>=5k) | growth |"
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    for row in sorted(r["rows"], key=lambda x: -(x["seconds"].get(sizes[-1]) or 0)):
        if row["error"]:
            lines.append(f"| {row['postprocessor']} | " + " | ".join("-" for _ in sizes) + f" | - | failed: {row['error']} |")
            continue
        cells = " | ".join(f"{row['seconds'][n]:.3f}" for n in sizes)
        b = row["exponent"]
        label = growth_label(b, max(row["seconds"].values()))
        lines.append(f"| {row['postprocessor']} | {cells} | {b:.2f} | {label} |" if b is not None
                     else f"| {row['postprocessor']} | {cells} | - | - |")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    colors, styles = plt.get_cmap("tab20").colors, ["-", "--", ":"]
    for i, row in enumerate(sorted(r["rows"], key=lambda x: -max(x["seconds"].values(), default=0))):
        if row["seconds"]:
            ns = [int(n) for n in row["seconds"]]
            ax.plot(ns, list(row["seconds"].values()), marker="o", ms=3, color=colors[i % 20],
                    linestyle=styles[i % 3], label=row["postprocessor"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ID-train samples N")
    ax.set_ylabel("fit + score seconds (test set fixed)")
    ax.set_title(f"postprocessor cost vs ID-train size ({r['dim']}-d features, {r['classes']} classes, "
                 f"{r['test']} test)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench zoo-scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000, 50000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--only", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-cap", type=float, default=2.0, help="stop repeating a point after this many seconds")
    parser.add_argument("--png", default="docs/bench/zoo_scaling.png")
    parser.add_argument("-o", "--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    r = bench_zoo_scaling(sorted(args.sizes), args.dim, args.classes, args.test, args.only, args.repeats,
                          args.repeat_cap)
    print(markdown_table(r))
    print(f"plot: {plot(r, Path(args.png))}")
    if args.output:
        write_json(args.output, r)
    return 0
