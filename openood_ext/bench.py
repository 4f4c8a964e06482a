"""``openood-ext bench postprocessors``: what the shared feature cache saves, measured in one run.

    openood-ext bench postprocessors [--config FILE.yml ...] [--benchmark NAME] [key=value ...]

1. T_fwd: one forward pass of the network over every split of the benchmark (the cache is bypassed).
2. T_zoo: every feature-space postprocessor (``needs_network = False``) with automatic parameter search
   over its grid (configs/postprocessors/<name>.yml), then fitted and scored on all test splits, all
   from the outputs of step 1.
3. The OpenOOD way, which re-runs the network for every postprocessor and every APS combination: per
   postprocessor one pass over ID train (setup), one pass over the validation splits per combination and
   one over the test splits. These passes are not re-run here: their cost is computed from the per-split
   forward times measured in step 1, plus the postprocessor's own compute measured in step 2.

Prints T_fwd, T_zoo, the ratio (T_fwd + T_zoo) / T_fwd and OpenOOD-way / ours.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .config import cli_overrides, load_config
from .errors import ConfigError
from .utils.io import write_json

DEFAULT_CONFIG = Path("configs") / "pipelines" / "test_ood.yml"


def _config_for(args) -> list[Path]:
    from .datasets.benchmark import resolve_path
    if args.config:
        return [Path(c) for c in args.config]
    if args.benchmark:
        path = resolve_path(Path("configs") / "pipelines" / f"test_ood_{args.benchmark}.yml")
        if not path.is_file():
            raise ConfigError(f"no pipeline config {path} for benchmark '{args.benchmark}' (pass --config)")
        return [path]
    return [resolve_path(DEFAULT_CONFIG)]


def bench_postprocessors(cfg, names: list[str] | None = None, aps_on: bool = True) -> dict:
    """Run the measurement described in the module docstring; returns the figures as a dict."""
    from .pipelines import aps
    from .pipelines.context import RunContext, build_benchmark, build_network
    from .pipelines.outputs import OutputStore
    from .pipelines.test_ood import ensure_checkpoint
    from .networks.checkpoint import load_checkpoint
    from .postprocessors import POSTPROCESSORS
    from .evaluators.metrics import ood_metrics

    cfg.cache_dir = None  # measure real forward passes
    with RunContext(cfg) as ctx:
        bench = build_benchmark(cfg)
        ckpt = ensure_checkpoint(cfg, ctx, bench)
        net = build_network(cfg, ctx.device)
        load_checkpoint(ckpt, net)
        store = OutputStore(net, bench, ckpt, cfg, ctx)
        splits = [s for s in bench.splits() if not s.is_ood or bench.missing_reason(s) is None]
        split_time = {}
        for split in splits:
            t = time.perf_counter()
            store.get(split)
            split_time[split.name] = time.perf_counter() - t
        t_fwd = sum(split_time.values())
        test_splits = [s for s in splits if s.group in ("id_test", "near", "far")]
        has_val = "ood_val" in split_time

        candidates = names or [n for n in POSTPROCESSORS.names()
                               if not POSTPROCESSORS.get(n).needs_network
                               and POSTPROCESSORS.get(n).__module__.startswith("openood_ext.")]
        train, id_val = store.get(bench.split("id_train")), store.get(bench.split("id_val"))
        rows, t_zoo = [], 0.0
        for name in candidates:
            grid = aps.load_method_config(name).get("aps_grid") if (aps_on and has_val) else None
            combos = aps.grid_combinations(dict(grid)) if grid else [{}]
            t0 = time.perf_counter()
            if grid:
                ood_val = store.get(bench.split("ood_val"))
                trials = []
                for combo in combos:
                    pp = POSTPROCESSORS.build({"name": name, **combo}).fit(train, val_outputs=id_val)
                    trials.append(ood_metrics(pp.score(id_val), pp.score(ood_val))["auroc"])
                chosen = combos[int(np.argmax(trials))]
            else:
                chosen = {}
            pp = POSTPROCESSORS.build({"name": name, **chosen}).fit(train, val_outputs=id_val)
            for split in test_splits:
                pp.score(store.get(split))
            elapsed = time.perf_counter() - t0
            t_zoo += elapsed
            val_pass = split_time["id_val"] + split_time.get("ood_val", 0.0)
            test_pass = sum(split_time[s.name] for s in test_splits)
            openood = split_time["id_train"] + (len(combos) * val_pass if grid else 0.0) + test_pass + elapsed
            rows.append({"postprocessor": name, "combinations": len(combos) if grid else 0,
                         "ours_s": elapsed, "openood_way_s": openood, "chosen": chosen})
        ours = t_fwd + t_zoo
        openood_total = sum(r["openood_way_s"] for r in rows)
        result = {"benchmark": bench.name, "aps": bool(aps_on and has_val), "device": str(ctx.device), "samples": {k: len(v) for k, v in store.memo.items()},
                  "forward_s_per_split": split_time, "t_fwd_s": t_fwd, "t_zoo_s": t_zoo,
                  "ratio_ours_over_fwd": ours / t_fwd, "openood_way_s": openood_total,
                  "ratio_openood_over_ours": openood_total / ours, "postprocessors": rows,
                  "openood_way_is_extrapolated": True}
        ctx.complete({"bench": {k: v for k, v in result.items() if k != "postprocessors"}})
    return result


def print_report(r: dict) -> None:
    print(f"\n== bench postprocessors on {r['benchmark']} ({r['device']}) ==")
    print("samples per split: " + ", ".join(f"{k} {v}" for k, v in r["samples"].items()))
    print(f"{'postprocessor':15s} {'APS combos':>10s} {'ours (s)':>10s} {'OpenOOD way (s)':>16s}")
    for row in r["postprocessors"]:
        print(f"{row['postprocessor']:15s} {row['combinations']:10d} {row['ours_s']:10.3f} {row['openood_way_s']:16.2f}")
    print(f"\nT_fwd (one forward pass over all splits): {r['t_fwd_s']:.2f} s")
    how = "with APS" if r["aps"] else "without APS (no OOD validation split, or --no-aps)"
    print(f"T_zoo ({len(r['postprocessors'])} feature-space postprocessors {how}, from the cache): {r['t_zoo_s']:.2f} s")
    print(f"(T_fwd + T_zoo) / T_fwd = {r['ratio_ours_over_fwd']:.3f}")
    print(f"OpenOOD way (network re-run per postprocessor and APS combination; computed from the measured "
          f"per-split forward times) = {r['openood_way_s']:.1f} s")
    print(f"OpenOOD way / ours = {r['ratio_openood_over_ours']:.1f}x")


# Other benchmarks live in their own modules, each with a main(argv).
OTHER_BENCHES = {"train": "openood_ext.bench_train", "npos": "openood_ext.bench_npos", "oaml": "openood_ext.bench_oaml",
                 "ddp": "openood_ext.bench_ddp",
                 # issue 17's suite (BENCHMARKS.md, "Bench suite (issue 17)")
                 "forward": "openood_ext.bench_forward", "imglist": "openood_ext.bench_imglist",
                 "knn": "openood_ext.bench_knn", "zoo-scaling": "openood_ext.bench_zoo_scaling"}


def main(argv) -> int:
    if argv and argv[0] in OTHER_BENCHES:
        import importlib
        return importlib.import_module(OTHER_BENCHES[argv[0]]).main(list(argv[1:]))
    parser = argparse.ArgumentParser(prog="openood-ext bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["postprocessors", *OTHER_BENCHES])
    parser.add_argument("--config", nargs="+", help="pipeline config(s); default configs/pipelines/test_ood.yml")
    parser.add_argument("--benchmark", help="use configs/pipelines/test_ood_<benchmark>.yml")
    parser.add_argument("--only", nargs="+", help="restrict to these postprocessors")
    parser.add_argument("--no-aps", action="store_true", help="skip the parameter search")
    parser.add_argument("-o", "--output", help="also write the figures as JSON here")
    args, rest = parser.parse_known_args(argv)
    overrides = cli_overrides([r for r in rest if r != "--debug"])
    cfg = load_config(_config_for(args), ["experiment=bench_postprocessors", *overrides])
    result = bench_postprocessors(cfg, args.only, not args.no_aps)
    print_report(result)
    if args.output:
        write_json(args.output, result)
    return 0
