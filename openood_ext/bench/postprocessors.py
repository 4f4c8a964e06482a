"""``openood-ext bench postprocessors``: the postprocessor zoo's cost against one forward pass, measured in one run.

    openood-ext bench postprocessors [--config FILE.yml ...] [--benchmark NAME] [--only NAME ...]
        [--members CKPT ...] [key=value ...]

1. T_fwd: one plain forward pass of the network over every split of the benchmark (cache bypassed).
2. The shared passes: the id_train pass again with the tap methods' fitting consumers (Gram, GMM, GrOOD,
   MDSEns's fit) and each test split's pass with their scoring consumers, which also carries the clean
   pass with gradients of ODIN, iODIN and AdaSCALE. Each tap method's own work in them (reductions in
   the hooks, updates, fit) is timed and charged to its row; the rest of the passes' time over the plain
   passes of step 1 is reported on a line of its own and counted once in the all-methods ratio.
3. Every postprocessor of the zoo (default: the 22 OpenOOD v1.5 methods, :data:`ZOO`, then the later ones
   of OpenOOD's registry, :data:`LATER_ZOO`) fitted and scored on the test splits with its default
   settings: feature-space methods from the outputs of step 1, methods on the network route (input
   gradients: ODIN, MDSEns, iODIN, AdaSCALE; edited feature maps: RankFeat) re-running the network once per
   split (ODIN, iODIN and AdaSCALE take the test splits' shared passes of step 2 as their clean pass
   with gradients; see ``postprocessors/input_gradients.py``); then again with automatic parameter
   search over its grid (configs/postprocessors/<name>.yml) when
   the benchmark has an OOD validation split (grids of ODIN/MDSEns/iODIN/AdaSCALE scored jointly, see
   ``pipelines/aps.py``). MC dropout (on a network with dropout layers) and the ensemble (with
   ``--members``) run T passes / one pass per member by design: each is reported apart, as its time over
   that many plain passes of the scored splits (<= 1: batching did not cost more than the passes).
4. The zoo's performance goals as ratios of this run's times (MC dropout and the ensemble left out):
   gradient-free zoo / T_fwd (goal <= 0.25), all methods / T_fwd (<= 3), all methods with APS / T_fwd
   (<= 12).
5. An ESTIMATE of OpenOOD's way (every postprocessor and APS combination re-running the network),
   computed from the per-split forward times of step 1 plus each method's own compute; it is not run.
   ``scripts/compare_with_openood.py`` runs OpenOOD's own code side by side instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import cli_overrides, load_config
from ..datasets.benchmark import resolve_path
from ..errors import ConfigError
from ..networks.checkpoint import load_checkpoint
from ..pipelines import aps
from ..pipelines.context import RunContext, build_benchmark, build_network
from ..pipelines.outputs import OutputStore
from ..pipelines.test_ood import ensure_checkpoint
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.base import as_postprocessor
from ..postprocessors.gram_rowsums import load_kernel
from ..postprocessors.schedule import Scheduler, fit_alone, fit_and_score
from ..utils.io import write_json

DEFAULT_CONFIG = Path("configs") / "pipelines" / "test_ood.yml"

#: the 22 OpenOOD v1.5 postprocessors of the zoo (the performance goals are stated for these)
ZOO = ("msp", "temp_scaling", "odin", "mds", "mds_ensemble", "rmds", "gram", "ebo", "gradnorm", "react", "mls",
       "klm", "vim", "knn", "dice", "ash", "she", "gen", "nnguide", "relation", "residual", "openmax")
#: post-hoc methods OpenOOD's registry added after v1.5, run by default after the 22: MC dropout when the
#: network has dropout layers, the ensemble when member checkpoints are given (``--members``); those two are
#: counted apart, against their own number of plain passes
LATER_ZOO = ("scale", "fdbd", "nci", "gmm", "vra", "cfood", "ssd", "rankfeat", "iodin", "adascale", "dropout",
             "ensemble", "grood")
GOALS = {"gradient_free_over_fwd": 0.25, "all_over_fwd": 3.0, "all_aps_over_fwd": 12.0}


def _config_for(args) -> list[Path]:
    if args.config:
        return [Path(c) for c in args.config]
    if args.benchmark:  # a method's recipe for that benchmark, e.g. configs/experiments/openood/test_ood_cifar10.yml
        found = sorted(resolve_path(Path("configs") / "experiments").glob(f"*/test_ood_{args.benchmark}.yml"))
        if not found:
            raise ConfigError(f"no config configs/experiments/*/test_ood_{args.benchmark}.yml for benchmark "
                              f"'{args.benchmark}' (pass --config)")
        return found[:1]
    return [resolve_path(DEFAULT_CONFIG)]


def bench_postprocessors(cfg, names: list[str] | None = None, aps_on: bool = True, clock: str = "wall",
                         members: list[str] | None = None) -> dict:
    """Run the measurement described in the module docstring; returns the figures as a dict.

    ``members``: the ensemble's member checkpoints (without them the ensemble is left out, as MC dropout
    is on a network without dropout layers; ``skipped`` says why).

    ``clock``: ``wall`` (time.perf_counter) or ``cpu`` (this process's CPU time, time.process_time:
    steadier on a shared machine; use it with ``num_workers=0``, as loader workers are other processes).
    """

    now = time.process_time if clock == "cpu" else time.perf_counter
    cfg.cache_dir = None  # measure real forward passes
    with RunContext(cfg) as ctx:
        bench = build_benchmark(cfg)
        ckpt = ensure_checkpoint(cfg, ctx, bench)
        net = build_network(cfg, ctx.device)
        load_checkpoint(ckpt, net)
        store = OutputStore(net, bench, ckpt, cfg, ctx)
        splits = [s for s in bench.splits() if s.group != "csid" and (not s.is_ood or bench.missing_reason(s) is None)]
        split_time = {}
        for split in splits:
            t = now()
            store.get(split)
            split_time[split.name] = now() - t
        t_fwd = sum(split_time.values())
        test_splits = [s for s in splits if s.group in ("id_test", "near", "far")]
        test_names = [s.name for s in test_splits]
        has_val = "ood_val" in split_time

        candidates, skipped = _runnable(list(names or (*ZOO, *LATER_ZOO)), net, members)
        args = {"ensemble": {"checkpoints": list(members or [])}}
        build = lambda name, **kw: as_postprocessor(POSTPROCESSORS.build({"name": name, **args.get(name, {}), **kw}))
        t = now()  # one-time costs per process, reported apart from the per-split figures
        _load_libraries(candidates)
        t_libraries = now() - t

        # 2. the scheduler's shared passes: layer taps ride on the id_train pass (fits) and each test
        # split's pass (scores); their cost is the time over the plain passes of step 1
        sched = Scheduler({name: build(name) for name in candidates}, store, net, ctx.device, clock=now)
        sched.prepare(test_names)
        t_taps, shared_gradients = _shared_pass_parts(sched, split_time)

        # 3. every method with its defaults (its own fit + scoring), then with APS
        rows = []
        test_pass = sum(split_time[s.name] for s in test_splits)
        for name in candidates:
            sched.score(name)
            how = sched.routes[name]
            passes = getattr(sched.pps[name], "passes_per_sample", None)  # dropout's T, the ensemble's M
            plain = sched.result.seconds[name]
            grid = aps.load_method_config(name).get("aps_grid") if (aps_on and has_val) else None
            combos = aps.grid_combinations(dict(grid)) if grid else []
            searched = 0.0
            if len(combos) == 1:  # nothing to search: the pipeline runs it as without APS
                searched = plain
            elif grid:
                t0 = now()

                def scores(p):
                    conf = fit_and_score(p, store, ["id_val", "ood_val"], net, ctx.device)
                    return conf["id_val"], conf["ood_val"]

                result = aps.search({"name": name}, dict(grid), scores,
                                    fit=lambda p: fit_alone(p, store, net, ctx.device),
                                    loaders={"id_val": store.loader_for("id_val"),
                                             "ood_val": store.loader_for("ood_val")})
                fit_and_score(build(name, **result["chosen"]), store, test_names, net, ctx.device)
                searched = now() - t0
            val_pass = split_time["id_val"] + split_time.get("ood_val", 0.0)
            if how == "network":  # its measured time holds its own passes; a grid point costs ~3 passes
                openood = split_time["id_train"] + plain + 3 * len(combos) * val_pass
            else:  # setup pass, val passes per grid point, test passes, plus its compute
                openood = split_time["id_train"] + len(combos) * val_pass + test_pass + plain
            # "gradient": network work of its own (input gradients, perturbed or edited passes; RankFeat's
            # tails even where it rides the shared pass), so not among the gradient-free methods
            own_network = how == "network" or getattr(sched.pps[name], "reruns_layers", False)
            rows.append({"postprocessor": name, "gradient": own_network and not passes, "taps": how == "taps",
                         "route": how, "passes": passes,
                         "over_own_passes": plain / (passes * test_pass) if passes else None,
                         "combinations": len(combos), "ours_s": plain, "ours_aps_s": searched,
                         "openood_way_s": openood,
                         "chosen": result["chosen"] if len(combos) > 1 else (combos[0] if combos else {})})
        zoo = [r for r in rows if not r["passes"]]  # dropout and the ensemble are counted against their own passes
        # the clean forward passes with gradients that ODIN, iODIN and AdaSCALE share (their rows hold the rest)
        shared_gradients.update(sched.result.shared_seconds)
        t_shared_grad = sum(shared_gradients.values())
        # the tap methods' rows hold their own work in the shared passes (t_taps is their sum, with the
        # MDSEns fit's); the rest of those passes over the plain ones counts once, in all methods
        grad_free = sum(r["ours_s"] for r in zoo if not r["gradient"])
        all_methods = sum(r["ours_s"] for r in zoo) + t_shared_grad
        all_aps = sum(r["ours_aps_s"] if r["combinations"] else r["ours_s"] for r in zoo) + t_shared_grad
        t_zoo = all_aps if (aps_on and has_val) else all_methods
        ours = t_fwd + t_zoo
        openood_total = sum(r["openood_way_s"] for r in rows)
        ratios = {"gradient_free_over_fwd": grad_free / t_fwd, "all_over_fwd": all_methods / t_fwd,
                  "all_aps_over_fwd": (all_aps / t_fwd) if (aps_on and has_val) else None}
        result = {"benchmark": bench.name, "aps": bool(aps_on and has_val), "device": str(ctx.device), "clock": clock,
                  "samples": {k: len(v) for k, v in store.memo.items()},
                  "forward_s_per_split": split_time, "t_fwd_s": t_fwd, "t_taps_s": t_taps,
                  "t_shared_gradients_s": t_shared_grad, "shared_gradient_groups": shared_gradients,
                  "t_libraries_s": t_libraries, "t_zoo_s": t_zoo, "t_fwd_scored_splits_s": test_pass,
                  "skipped": skipped,
                  "zoo_gradient_free_s": grad_free, "zoo_all_s": all_methods, "zoo_all_aps_s": all_aps,
                  "goal_ratios": ratios, "goals": GOALS,
                  "ratio_ours_over_fwd": ours / t_fwd, "openood_way_s": openood_total,
                  "ratio_openood_over_ours": openood_total / ours, "postprocessors": rows,
                  "openood_way_is_extrapolated": True}
        ctx.complete({"bench": {k: v for k, v in result.items() if k != "postprocessors"}})
    return result


def _shared_pass_parts(sched: Scheduler, split_time: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(seconds of the layer taps, {what: seconds} of the rest of the shared passes) on the scheduler's
    shared passes. The taps are timed directly (their reductions in the hooks, updates and fits; each
    method's part is in its row): the difference of two whole passes moves by about a second between
    runs here. The rest of each shared pass over the split's plain pass, less the taps and the gradient
    group's own backward and perturbed passes (in their rows), is the passes' own cost: on the scored
    splits that carried the gradient group its clean pass with gradients (in micro-batches; it can come
    out below the plain pass in 256-image batches), plus the hooks and the timing noise."""
    r = sched.result
    taps = sum(r.tap_seconds.values())
    rest = sum(sec - split_time[split] - r.tap_seconds.get(split, 0.0) - r.gradient_seconds.get(split, 0.0)
               for split, sec in r.pass_seconds.items())
    what = "the shared passes over the plain ones, taps and gradient methods' own work left out"
    if r.gradient_seconds:
        what += f" (with the clean passes with gradients of {', '.join(sched.gradient_group)})"
    return taps, ({what: rest} if r.pass_seconds else {})


def _runnable(names: list[str], net, members) -> tuple[list[str], dict[str, str]]:
    """(the names that can run on this network, name -> why the others cannot)."""
    from ..postprocessors.dropout import dropout_layers
    skipped = {}
    if "dropout" in names and not dropout_layers(net):
        skipped["dropout"] = "the network has no dropout layer (digits_cnn: +network.dropout=0.5)"
    if "ensemble" in names and not members:
        skipped["ensemble"] = "no member checkpoints (--members)"
    return [n for n in names if n not in skipped], skipped


def _load_libraries(names) -> None:
    """Import the libraries the zoo calls into (faiss, scikit-learn, scipy) and load Gram's compiled
    kernel, so that whichever method happens to touch them first is not charged their import."""
    import importlib

    for module in ("faiss", "sklearn.linear_model", "sklearn.covariance", "scipy.stats"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if "gram" in names:
        load_kernel()


def print_report(r: dict) -> None:
    print(f"\n== bench postprocessors on {r['benchmark']} ({r['device']}, {r.get('clock', 'wall')} clock) ==")
    print("samples per split: " + ", ".join(f"{k} {v}" for k, v in r["samples"].items()))
    print(f"{'postprocessor':15s} {'kind':>8s} {'APS combos':>10s} {'ours (s)':>9s} {'ours APS (s)':>12s} "
          f"{'OpenOOD way, ESTIMATE (s)':>26s}")
    for row in r["postprocessors"]:
        kind = "passes" if row.get("passes") else {"network": "network", "taps": "taps"}.get(row.get("route"),
                                                                                             "features")
        print(f"{row['postprocessor']:15s} {kind:>8s} {row['combinations']:10d} {row['ours_s']:9.3f} "
              f"{row['ours_aps_s']:12.3f} {row['openood_way_s']:26.2f}")
    print(f"\nT_fwd (one forward pass over all splits): {r['t_fwd_s']:.2f} s")
    print(f"layer taps (Gram, GMM, GrOOD, RankFeat's tails, MDSEns's fit), timed in the shared passes: {r['t_taps_s']:.2f} s "
          f"(in the methods' rows)")
    for group, sec in r.get("shared_gradient_groups", {}).items():
        if group.startswith("input gradients"):  # the group's clean passes, run apart from the shared passes
            group = f"shared clean passes with gradients ({group}; their rows hold the rest)"
        print(f"{group}: {sec:.2f} s")
    if r.get("t_libraries_s"):
        print(f"one-time library imports and Gram's compiled kernel (once per process; not in the ratios): "
              f"{r['t_libraries_s']:.2f} s")
    how = "with APS" if r["aps"] else "without APS (no OOD validation split, or --no-aps)"
    zoo = [row for row in r["postprocessors"] if not row.get("passes")]
    print(f"T_zoo ({len(zoo)} postprocessors {how}; the multi-pass methods below apart): {r['t_zoo_s']:.2f} s")
    print(f"(T_fwd + T_zoo) / T_fwd = {r['ratio_ours_over_fwd']:.3f}")
    print("performance goals, ratios measured in this run:")
    n = len(zoo)
    labels = {"gradient_free_over_fwd": "methods without network passes of their own (taps included) / T_fwd",
              "all_over_fwd": f"all {n} methods run, one noise setting each / T_fwd",
              "all_aps_over_fwd": f"all {n} methods run, APS over every grid / T_fwd"}
    for key, goal in r["goals"].items():
        value = r["goal_ratios"][key]
        if value is None:
            print(f"  {labels[key]}: not measured (no OOD validation split)")
        else:
            print(f"  {labels[key]}: {value:.3f} (goal <= {goal}: {'met' if value <= goal else 'NOT met'})")
    for row in r["postprocessors"]:
        if row.get("passes"):
            print(f"  {row['postprocessor']}: {row['ours_s']:.2f} s = {row['over_own_passes']:.3f} x its "
                  f"{row['passes']} plain passes over the scored splits ({r['t_fwd_scored_splits_s']:.2f} s each)")
    for name, why in r.get("skipped", {}).items():
        print(f"  {name}: not run ({why})")
    print(f"OpenOOD way, ESTIMATE (computed from the measured per-split forward times, not run; "
          f"scripts/compare_with_openood.py runs OpenOOD's code) = {r['openood_way_s']:.1f} s")
    print(f"OpenOOD way / ours = {r['ratio_openood_over_ours']:.1f}x (estimate)")


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench postprocessors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", help="pipeline config(s); default configs/pipelines/test_ood.yml")
    parser.add_argument("--benchmark", help="use configs/experiments/*/test_ood_<benchmark>.yml")
    parser.add_argument("--only", nargs="+", help="restrict to these postprocessors")
    parser.add_argument("--no-aps", action="store_true", help="skip the parameter search")
    parser.add_argument("--members", nargs="+", help="the ensemble's member checkpoints (else it is not run)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="postprocessors: wall time, or this process's CPU time (shared machines)")
    parser.add_argument("-o", "--output", help="also write the figures as JSON here")
    args, rest = parser.parse_known_args(argv)
    overrides = cli_overrides([r for r in rest if r != "--debug"])
    cfg = load_config(_config_for(args), ["experiment=bench_postprocessors", *overrides])
    result = bench_postprocessors(cfg, args.only, not args.no_aps, args.clock, args.members)
    print_report(result)
    if args.output:
        write_json(args.output, result)
    return 0
