"""The postprocessor benchmark runs and its figures are consistent with each other."""

from __future__ import annotations

import json

from conftest import cli


def test_bench_postprocessors_on_digits(digits_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench", "postprocessors", "--only", "msp", "knn", "-o", str(out),
               f"network.checkpoint={digits_checkpoint}", module="openood_ext.cli", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(T_fwd + T_zoo) / T_fwd" in proc.stdout and "OpenOOD way / ours" in proc.stdout
    r = json.loads(out.read_text())
    assert [row["postprocessor"] for row in r["postprocessors"]] == ["msp", "knn"]
    assert abs(r["t_fwd_s"] - sum(r["forward_s_per_split"].values())) < 1e-9
    assert abs(r["ratio_ours_over_fwd"] - (r["t_fwd_s"] + r["t_zoo_s"]) / r["t_fwd_s"]) < 1e-9
    knn = r["postprocessors"][1]
    from openood_ext.pipelines.aps import grid_combinations, load_method_config
    assert knn["combinations"] == len(grid_combinations(load_method_config("knn")["aps_grid"]))
    assert r["openood_way_s"] > r["t_fwd_s"]  # re-running the network per APS combination costs more
