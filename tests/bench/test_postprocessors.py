"""The postprocessor benchmark runs and its figures are consistent with each other."""

from __future__ import annotations

import json

from conftest import cli


def test_bench_postprocessors_on_digits(digits_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    # MC dropout on the same weights with a dropout layer (it has no parameters), the checkpoint twice as an ensemble
    # the overrides first: --only and --members take every word after them
    proc = cli("bench", "postprocessors", f"network.checkpoint={digits_checkpoint}", "+network.dropout=0.5",
               "-o", str(out), "--only", "msp", "knn", "odin", "iodin", "dropout", "ensemble",
               "--members", str(digits_checkpoint), str(digits_checkpoint), module="openood_ext.cli", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(T_fwd + T_zoo) / T_fwd" in proc.stdout and "OpenOOD way / ours" in proc.stdout
    r = json.loads(out.read_text())
    assert [row["postprocessor"] for row in r["postprocessors"]] == ["msp", "knn", "odin", "iodin", "dropout", "ensemble"]
    rows = {row["postprocessor"]: row for row in r["postprocessors"]}
    assert (rows["dropout"]["passes"], rows["ensemble"]["passes"]) == (5, 2)
    for name in ("dropout", "ensemble"):  # counted apart: against their own plain passes, not in the zoo's ratios
        row = rows[name]
        assert abs(row["over_own_passes"] - row["ours_s"] / (row["passes"] * r["t_fwd_scored_splits_s"])) < 1e-9
        assert f"{name}: " in proc.stdout and "plain passes over the scored splits" in proc.stdout
    # ODIN and iODIN share their clean passes with gradients, which are the scored splits' shared passes
    # run with gradients on: their cost is the rest of those passes, reported on a line of its own
    (rest,) = r["shared_gradient_groups"]
    assert rest.endswith("(with the clean passes with gradients of odin, iodin)") and f"{rest}: " in proc.stdout
    zoo_s = sum(rows[n]["ours_s"] for n in ("msp", "knn", "odin", "iodin")) + r["t_shared_gradients_s"]
    assert abs(r["zoo_all_s"] - zoo_s) < 1e-9
    free_s = sum(rows[n]["ours_s"] for n in ("msp", "knn"))
    assert abs(r["zoo_gradient_free_s"] - free_s) < 1e-9
    assert abs(r["t_fwd_s"] - sum(r["forward_s_per_split"].values())) < 1e-9
    assert abs(r["ratio_ours_over_fwd"] - (r["t_fwd_s"] + r["t_zoo_s"]) / r["t_fwd_s"]) < 1e-9
    knn = rows["knn"]
    from openood_ext.pipelines.aps import grid_combinations, load_method_config
    assert knn["combinations"] == len(grid_combinations(load_method_config("knn")["aps_grid"]))
    assert r["openood_way_s"] > r["t_fwd_s"]  # re-running the network per APS combination costs more
