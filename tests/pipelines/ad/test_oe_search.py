"""EOE's OE-image search (openood_ext/search, pipelines/oe_search): the evolutionary operators against their
definitions on a toy pool (selection, mating and mutation rates within binomial bounds), resume after a kill
equal to an uninterrupted run, random search, budget errors; the pipeline end to end on tiny data."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_benchmark, write_class_set

from openood_ext.errors import ConfigError
from openood_ext.search import Search, SearchSettings
from openood_ext.search.evolution import Node, nearest_pick

# A toy pool: image i is the point X[i] on a line; d(a, c) = (X[a] - X[c])^2 (EOE's squared distance).
N = 200
X = np.sort(np.random.default_rng(1).random(N)) * 100


def toy_distance(a: int, cand: np.ndarray) -> np.ndarray:
    return (X[a] - X[np.asarray(cand)]) ** 2


def toy_fitness(nodes):
    return [-(X[n.image] - 70.0) ** 2 / 1e4 for n in nodes]


def within(count: int, n: int, p: float, z: float = 5.0) -> bool:
    """``count`` is within z binomial standard deviations of n*p."""
    return abs(count - n * p) <= z * np.sqrt(n * p * (1 - p)) + 1


def test_tournament_selection_matches_its_distribution():
    """P(winner = the individual with r worse ones) = C(r, 2) / C(n, 3) for 3 aspirants without replacement."""
    n, draws = 8, 3000
    for minimize in (False, True):
        search = Search(SearchSettings(population=n, minimize=minimize), N, toy_distance)
        pop = [Node(i, i, 0, "init", fitness=float(i)) for i in range(n)]
        counts = np.zeros(n, int)
        rng = np.random.default_rng(0)
        for _ in range(draws):
            for winner in search.select(pop, rng):
                counts[winner.id] += 1
        total = draws * n
        for i in range(n):
            worse = i if not minimize else n - 1 - i
            p = comb(worse, 2) / comb(n, 3)
            assert within(counts[i], total, p), (minimize, i, counts[i], total * p)
        assert counts[0 if not minimize else n - 1] == 0 and counts[1 if not minimize else n - 2] == 0


def test_mating_and_mutation_rates_over_many_generations():
    s = SearchSettings(population=64, mate_prob=0.05, mutation_prob=0.55, one_of_k_best=5, duplicate_distance=0.0)
    search = Search(s, N, toy_distance)
    gens, mated, mutated, changed = 150, 0, 0, 0
    for g in range(gens):
        pop = [Node(i, int(i % N), 0, "init", fitness=float(i)) for i in range(64)]
        off, events = search.step(pop, 1, np.random.default_rng([7, g]))
        mated += len(events["mated_pairs"])
        mutated += len(events["mutated"])
        changed += sum(o.op == "mutate" for o in off)
        for i, o in enumerate(off):  # a mutated slot is a new node whose parent is the slot's selected node
            if o.op == "mutate":
                assert i in events["mutated"] and len(o.parents) == 1
    assert within(mated, gens * 32, 0.05) and within(mutated, gens * 64, 0.55)
    assert changed == mutated  # distinct points: every mutation finds a non-duplicate neighbour


def test_mutation_picks_uniformly_among_the_k_nearest_non_duplicates():
    a, k, draws = 100, 4, 4000
    cand = np.arange(N)
    d = toy_distance(a, cand)
    order = np.argsort(d)
    assert order[0] == a  # itself, distance 0: skipped as a near-duplicate (threshold 0)
    allowed = set(order[1:1 + k].tolist())
    rng = np.random.default_rng(3)
    picks = [nearest_pick(d, cand, 0.0, k, rng) for _ in range(draws)]
    assert set(picks) == allowed
    for img in allowed:
        assert within(picks.count(img), draws, 1 / k)
    # a larger threshold skips more: everything within distance 0.25 (|dx| <= 0.5) is a near-duplicate
    picks = {nearest_pick(d, cand, 0.25, k, rng) for _ in range(500)}
    assert all(d[p] > 0.25 for p in picks)
    assert nearest_pick(np.zeros(3), np.arange(3), 0.0, k, rng) is None  # all duplicates: no change


def test_mating_picks_an_image_between_both_parents():
    s = SearchSettings(population=4, one_of_k_best=3, duplicate_distance=0.0, mutation_pool=10000)
    search = Search(s, N, toy_distance)
    a, b = 40, 80
    mid = (X[a] + X[b]) / 2
    # d(a, c) + d(b, c) is smallest for the 3 points nearest the midpoint
    nearest_mid = set(np.argsort(np.abs(X - mid))[:3].tolist())
    rng = np.random.default_rng(5)
    kids = [k for _ in range(300) for k in search.mate_images(a, b, rng)]
    assert set(kids) == nearest_mid
    for img in nearest_mid:
        assert within(kids.count(img), len(kids), 1 / 3)


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    s = SearchSettings(population=10, generations=6, mate_prob=0.3, mutation_prob=0.55, one_of_k_best=5,
                       duplicate_distance=0.0, mutation_pool=50, seed=3)
    full = Search(s, N, toy_distance, tmp_path / "full.json").run(toy_fitness)
    assert full.gen == 5 and len(full.history) == 6

    calls = {"n": 0}

    def dies_in_generation_3(nodes):
        if min(n.gen for n in nodes) == 3:
            raise Killed
        calls["n"] += len(nodes)
        return toy_fitness(nodes)

    path = tmp_path / "resumed.json"
    with pytest.raises(Killed):
        Search(s, N, toy_distance, path).run(dies_in_generation_3)
    saved = json.loads(path.read_text())
    assert saved["gen"] == 2  # generations 0..2 were written
    before = calls["n"]
    seen = []

    def counting(nodes):
        seen.extend(n.gen for n in nodes)
        return toy_fitness(nodes)

    resumed = Search(s, N, toy_distance, path).run(counting)
    assert min(seen) == 3 and before == full.history[2]["evaluations"]  # nothing re-evaluated
    assert resumed.genealogy() == full.genealogy()
    assert json.loads(path.read_text())["nodes"] == json.loads((tmp_path / "full.json").read_text())["nodes"]


def test_search_improves_and_minimize_finds_the_worst():
    s = SearchSettings(population=16, generations=8, one_of_k_best=5, duplicate_distance=0.0, seed=0)
    best = Search(s, N, toy_distance).run(toy_fitness)
    h = best.history
    assert h[-1]["max"] >= h[0]["max"] and best.genealogy()["found"]["fitness"] == max(n.fitness for n in best.evaluated())
    worst = Search(SearchSettings(**{**s.__dict__, "minimize": True}), N, toy_distance).run(toy_fitness)
    assert worst.history[-1]["min"] <= worst.history[0]["min"]
    assert worst.genealogy()["found"]["fitness"] == min(n.fitness for n in worst.evaluated())
    # genealogy: every non-initial node has parents that exist and are older or of the same generation
    g = best.genealogy()
    ids = {n["id"]: n for n in g["nodes"]}
    for n in g["nodes"]:
        assert (n["op"] == "init") == (not n["parents"])
        assert all(ids[p]["gen"] <= n["gen"] and p < n["id"] for p in n["parents"])
    assert "oracle" in g["oracle_note"]


def test_random_search_evaluates_distinct_images_and_resumes(tmp_path):
    s = SearchSettings(mode="random", samples=25, population=10, seed=4)
    ref = Search(s, N, toy_distance).run(toy_fitness)
    images = [n.image for n in ref.evaluated()]
    assert len(images) == 25 and len(set(images)) == 25 and len(ref.history) == 3
    assert ref.best(1)[0].fitness == max(toy_fitness(ref.evaluated()))
    path = tmp_path / "state.json"

    def dies(nodes):
        if nodes[0].gen == 1:
            raise Killed
        return toy_fitness(nodes)

    with pytest.raises(Killed):
        Search(s, N, toy_distance, path).run(dies)
    assert Search(s, N, toy_distance, path).run(toy_fitness).genealogy() == ref.genealogy()
    with pytest.raises(ConfigError, match="oe_search.samples: 300 distinct images asked, the candidate pool holds 200"):
        Search(SearchSettings(mode="random", samples=300), N, toy_distance)


def test_budget_errors_and_stops():
    with pytest.raises(ConfigError, match=r"oe_search.budget: 10 fitness evaluations are less than one generation "
                                          r"\(population 64\)"):
        SearchSettings(budget=10).check()
    with pytest.raises(ConfigError, match="oe_search.mutation_prob"):
        SearchSettings(mutation_prob=1.5).check()
    with pytest.raises(ConfigError, match="oe_search.tournament"):
        SearchSettings(population=2).check()
    s = SearchSettings(population=10, generations=50, budget=25, one_of_k_best=5, duplicate_distance=0.0)
    run = Search(s, N, toy_distance).run(toy_fitness)
    assert run.evaluations <= 25 and run.stopped and run.gen < 49


def test_changed_settings_refuse_to_resume(tmp_path):
    s = SearchSettings(population=6, generations=2, one_of_k_best=5, duplicate_distance=0.0)
    Search(s, N, toy_distance, tmp_path / "s.json").run(toy_fitness)
    with pytest.raises(ConfigError, match="saved search state has other settings \\(population\\)"):
        Search(SearchSettings(population=8, generations=2, one_of_k_best=5, duplicate_distance=0.0), N, toy_distance, tmp_path / "s.json").run(toy_fitness)
    with pytest.raises(ConfigError, match="saved search state is over another candidate pool"):
        Search(s, N, toy_distance, tmp_path / "s.json", fingerprint="other").run(toy_fitness)


# ---------------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 3-class RGB 32x32 set (class c brightens channel c) and 12 candidate OE images."""
    from PIL import Image
    root = tmp_path_factory.mktemp("oe_search")
    rng = np.random.default_rng(0)
    write_class_set(root, "channel", (("train", 12), ("val", 2), ("test", 6)), rng)
    for k in range(12):
        img = (rng.random((40, 40, 3)) * 255 * (k + 1) / 12).astype(np.uint8)
        (root / "pool").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "pool" / f"cand_{k:02d}.png")
    return root


def search_cfg(root: Path, tmp: Path, **search):
    from omegaconf import OmegaConf
    pre = {"image_size": 32, "resize": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "train_augment": []}
    return OmegaConf.create({
        "pipeline": "oe_search", "experiment": "search", "seed": 0, "device": "cpu", "output_dir": str(tmp / "results"),
        "num_workers": 0, "batch_size": 64,
        "benchmark": toy_benchmark(root, "cifar10_ad", pre),
        "network": {"name": "eoe_cnn32", "in_channels": 3, "rep_dim": 16, "clf": False},
        "trainer": {"name": "eoe_hsc", "epochs": 1, "batch_size": 6, "optimizer": {"name": "adam", "lr": 1e-3},
                    "scheduler": {"name": "constant"}, "outliers": {"name": "oe_images", "limit": 3}},
        "ad": {"classes": [0], "seeds": 1, "heatmaps": 0},
        "oe_search": {"candidates": {"folder": str(root / "pool")}, "population": 4, "generations": 2,
                      "mate_prob": 0.5, "mutation_prob": 0.55, "one_of_k_best": 3, "duplicate_distance": 1.0,
                      "grid": 4, **search}})


def fake_run_ad(calls):
    """Stands in for a short training: fitness = brightness rank of the one OE image (cand_<k>.png -> k / 11)."""
    def run(cfg):
        listing = Path(cfg.trainer.outliers.imglist).read_text().splitlines()
        assert cfg.pipeline == "ad" and len(listing) == 1 and cfg.trainer.outliers.name == "oe_images"
        assert "oe_search" not in cfg and cfg.ad.heatmaps == 0 and cfg.output_dir.endswith("evals")
        calls.append(cfg.experiment)
        if calls[-1] == "die":
            raise Killed
        return int(listing[0].split("_")[1][:2]) / 11
    return run


def test_pipeline_outputs_and_resume_with_a_stand_in_fitness(tiny, tmp_path):
    from openood_ext.pipelines.ad.oe_search import OESearchPipeline
    from openood_ext.utils.interrupts import RunInterrupted
    cfg = search_cfg(tiny, tmp_path, generations=4, population=6, minimize=True)
    calls = []
    ref = OESearchPipeline(cfg, run_ad=fake_run_ad(calls)).run()
    run = Path(ref["run_dir"])
    evo = json.loads((run / "evolution.json").read_text())
    assert len(calls) == evo["evaluations"] == len({n["id"] for n in evo["nodes"] if n["fitness"] is not None})
    assert ref["worst"]["fitness"] == min(int(p[5:7]) for p in [n["path"] for n in evo["nodes"] if n["fitness"] is not None]) / 11
    assert evo["found"]["fitness"] == ref["worst"]["fitness"] and evo["objective"].startswith("minimise")
    assert (run / "best.png").is_file() and (run / "worst.png").is_file() and (run / "plots" / "fitness.png").is_file()
    # interrupted in generation 2, then resumed: same genealogy, no generation evaluated twice
    cfg2 = search_cfg(tiny, tmp_path, generations=4, population=6, minimize=True)
    cfg2.experiment = "search2"
    calls2 = []
    first = fake_run_ad(calls2)

    def dies_in_gen2(c):
        if len(calls2) >= evo["history"][1]["evaluations"]:  # generations 0 and 1 done: die in generation 2
            raise RunInterrupted(15)
        return first(c)

    with pytest.raises(RunInterrupted):
        OESearchPipeline(cfg2, run_ad=dies_in_gen2).run()
    assert json.loads((tmp_path / "results" / "search2.partial" / "search_state.json").read_text())["gen"] == 1
    cfg2.resume = True
    n_before = len(calls2)
    out = OESearchPipeline(cfg2, run_ad=fake_run_ad(calls2)).run()
    evo2 = json.loads((Path(out["run_dir"]) / "evolution.json").read_text())
    assert evo2["nodes"] == evo["nodes"] and evo2["history"] == evo["history"]
    assert len(calls2) - n_before == evo["evaluations"] - evo["history"][1]["evaluations"]


@pytest.mark.slow
def test_pipeline_end_to_end_on_tiny_data(tiny, tmp_path):
    from openood_ext.runner import run_config
    out = run_config(search_cfg(tiny, tmp_path))
    run = Path(out["run_dir"])
    evo = json.loads((run / "evolution.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert "oracle analysis" in evo["oracle_note"] and "oracle analysis" in metrics["oracle_note"]
    assert evo["generations_done"] == 2 and (run / "best.png").is_file() and (run / "worst.png").is_file()
    evaluated = [n for n in evo["nodes"] if n["fitness"] is not None]
    assert metrics["best"]["fitness"] == max(n["fitness"] for n in evaluated)
    assert metrics["worst"]["fitness"] == min(n["fitness"] for n in evaluated)
    for n in evaluated:  # each fitness is its own ad run's mean AUROC, trained with that one image as OE
        ev = run / "evals" / f"node_{n['id']:05d}"
        assert json.loads((ev / "metrics.json").read_text())["auroc_mean"] == n["fitness"]
        assert (run / "oe_lists" / f"node_{n['id']:05d}.txt").read_text() == f"{n['path']} -1\n"
        cell = json.loads((ev / "normal_0" / "seed_0" / "result.json").read_text())
        assert cell["auroc"] == n["fitness"]
        assert not (ev / "normal_0" / "seed_0" / "checkpoint.pt").exists()  # pruned
    # the same search with its evaluations as 2 parallel launcher jobs (separate processes): same numbers
    cfg = search_cfg(tiny, tmp_path, launcher={"backend": "local", "jobs": 2})
    cfg.experiment = "search_jobs"
    jobs = json.loads((Path(run_config(cfg)["run_dir"]) / "evolution.json").read_text())
    assert [n["fitness"] for n in jobs["nodes"]] == [n["fitness"] for n in evo["nodes"]]
    assert [n["image"] for n in jobs["nodes"]] == [n["image"] for n in evo["nodes"]]


def test_pipeline_bad_input_fails_before_any_directory(tiny, tmp_path):
    from openood_ext.runner import run_config
    with pytest.raises(ConfigError, match="oe_search.budget: 3 fitness evaluations are less than one generation"):
        run_config(search_cfg(tiny, tmp_path, budget=3))
    with pytest.raises(ConfigError, match="oe_search: unknown key"):
        run_config(search_cfg(tiny, tmp_path, populaton=3))
    from openood_ext.errors import DataError
    with pytest.raises(DataError, match="oe_search.candidates.folder"):
        run_config(search_cfg(tiny, tmp_path, candidates={"folder": str(tmp_path / "nope")}))
    bad = search_cfg(tiny, tmp_path)
    bad.benchmark.data_root = bad.benchmark.imglist_dir = str(tmp_path / "no_data")  # data problems: before the search
    with pytest.raises(DataError, match="id_train image list"):
        run_config(bad)
    assert not (tmp_path / "results").exists()
