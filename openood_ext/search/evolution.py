"""Search for the best (or worst) single OE image: EOE's evolutionary search and its random-search baseline
(Liznerski et al., TMLR 2022; ``liznerski/eoe`` ``src/eoe/evolve/__init__.py``, ``main/evolve_oe_*.py``,
``main/random_oe_*.py``). This module is the algorithm only; what an image's fitness is (a short AD training,
see :mod:`openood_ext.pipelines.ad.oe_search`) and how images are compared (:mod:`.candidates`) come from outside.

An individual is one candidate image (an index into a pool of ``n`` images). Evolutionary search:

* generation 0: ``population`` images drawn uniformly (with replacement, as EOE), all evaluated;
* every later generation (``rng`` seeded by (seed, generation), so a resumed search repeats it exactly):
  1. **selection**: ``population`` tournaments of ``tournament`` aspirants drawn without replacement;
     the fittest wins (duplicates allowed; a survivor keeps its node and its fitness);
  2. **mating**: consecutive pairs (0,1), (2,3), ... mate with probability ``mate_prob``: child 1 is drawn
     from one pool of ``mutation_pool`` random candidates, child 2 from another; in each pool the
     candidates are ranked by d(parent 1, c) + d(parent 2, c) (an image "between" both parents),
     candidates with that sum <= ``duplicate_distance`` are skipped (near-duplicates) and the child is
     uniform among the next ``one_of_k_best``;
  3. **mutation**: each slot mutates with probability ``mutation_prob``: the same with d(image, c) alone;
  4. every individual without fitness (mated or mutated) is evaluated.

  d is the squared L2 distance of the images' pixel values in [0, 1] at the benchmark's resolution (EOE:
  CPU-transformed tensors, threshold 100). Deviation: EOE draws the ``mutation_pool`` candidates with
  replacement; here they are drawn without replacement, and the whole pool is used when it holds no more
  than ``mutation_pool`` images (the intended "10,000 different random images"; identical for EOE's
  79-million-image pool). A mutation that finds no candidate beyond ``duplicate_distance`` leaves the
  image (and its fitness) unchanged; EOE would crash there.
* ``budget`` caps the number of fitness evaluations: the search stops before a generation that would
  exceed it (it must cover generation 0, one population, else :class:`ConfigError`).

Random search: ``samples`` distinct images drawn uniformly, evaluated in chunks of ``population``.

``minimize`` searches for the worst images (fitness is negated for selection only). The state (nodes,
population, evaluations) is written atomically after every generation (:meth:`Search.run` resumes from it);
``genealogy()`` is the ``evolution.json`` content: every node with its image, generation, operation
(init/random/mate/mutate), parents and fitness.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..schema import NonNegativeFloat, NonNegativeInt, PositiveInt, Probability, check_section
from ..utils.io import write_json

SearchMode = Literal["evolve", "random"]
MODES = typing.get_args(SearchMode)
#: What every output of the search says (the paper's fitness is a test-split AUROC as well).
ORACLE_NOTE = ("fitness = mean test AUROC of short trainings with that single OE image: measured on the test "
               "split, this is an oracle analysis (as in the EOE paper), not a model-selection procedure")


@dataclass
class SearchSettings:
    """The ``oe_search:`` keys of the algorithm (EOE's defaults), validated by :meth:`check`."""

    mode: SearchMode = "evolve"
    population: PositiveInt = 64
    generations: PositiveInt = 50
    tournament: PositiveInt = 3
    mate_prob: Probability = 0.05
    mutation_prob: Probability = 0.55
    mutation_pool: PositiveInt = 10000
    one_of_k_best: PositiveInt = 50
    duplicate_distance: NonNegativeFloat = 100.0
    samples: PositiveInt = 2000
    budget: PositiveInt | None = None  # fitness evaluations
    minimize: bool = False
    seed: NonNegativeInt = 0

    def check(self, pool_size: int | None = None) -> SearchSettings:
        check_section("oe_search", SearchSettings, vars(self))  # types and ranges of the fields above
        if self.tournament > self.population:
            raise ConfigError(f"oe_search.tournament: {self.tournament} aspirants drawn without replacement need a "
                              f"population of at least {self.tournament}, got population {self.population}")
        b = self.budget
        if self.mode == "evolve" and b is not None and b < self.population:
            raise ConfigError(f"oe_search.budget: {b} fitness evaluations are less than one generation "
                              f"(population {self.population}); give budget >= population or null")
        if pool_size is not None:
            if pool_size < 1:
                raise ConfigError("oe_search: the candidate pool is empty")
            if self.mode == "random" and self.samples > pool_size:
                raise ConfigError(f"oe_search.samples: {self.samples} distinct images asked, the candidate pool "
                                  f"holds {pool_size}")
        return self

    @property
    def max_evaluations(self) -> int:
        cap = self.population * self.generations if self.mode == "evolve" else self.samples
        return cap if self.budget is None else min(cap, self.budget)


@dataclass
class Node:
    """One individual of the genealogy (a node is created by init/random/mate/mutate, shared by selection)."""

    id: int
    image: int
    gen: int
    op: str
    parents: list[int] = field(default_factory=list)
    fitness: float | None = None


def nearest_pick(d: np.ndarray, candidates: np.ndarray, duplicate_distance: float, k: int,
                 rng: np.random.Generator) -> int | None:
    """EOE's pick: sort candidates by distance ``d``, skip those with d <= ``duplicate_distance``, return one
    of the next ``k`` uniformly (None when every candidate is a near-duplicate)."""
    order = np.argsort(d, kind="stable")
    order = order[d[order] > duplicate_distance]
    if len(order) == 0:
        return None
    return int(candidates[order[rng.integers(min(k, len(order)))]])


class Search:
    """One search over a pool of ``pool_size`` images (see the module doc).

    Args:
        settings: :class:`SearchSettings`.
        pool_size: number of candidate images.
        distance: ``(image, candidates [m]) -> squared distances [m]`` (numpy), d(image, c) in the module doc.
        state_path: JSON file written atomically after every generation (None: not saved).
        fingerprint: identifies the candidate pool (e.g. a hash of its file names); a saved state with
            another fingerprint is not resumed (its image indices would point at other images).
    """

    def __init__(self, settings: SearchSettings, pool_size: int,
                 distance: Callable[[int, np.ndarray], np.ndarray], state_path: str | Path | None = None,
                 fingerprint: str | None = None):
        self.s = settings.check(pool_size)
        self.n = int(pool_size)
        self.distance = distance
        self.state_path = Path(state_path) if state_path else None
        self.fingerprint = fingerprint
        self.nodes: dict[int, Node] = {}
        self.population: list[int] = []
        self.history: list[dict] = []
        self.evaluations = 0
        self.gen = -1  # last finished generation
        self.stopped: str | None = None

    # ------------------------------------------------------------------ bookkeeping
    def rng(self, gen: int) -> np.random.Generator:
        return np.random.default_rng([self.s.seed, 0xE0E, gen])

    def new_node(self, image: int, gen: int, op: str, parents: Sequence[int] = ()) -> Node:
        node = Node(len(self.nodes), int(image), gen, op, [int(p) for p in parents])
        self.nodes[node.id] = node
        return node

    def key(self, node: Node) -> float:
        """Selection key: the fitness, negated when minimising."""
        return -node.fitness if self.s.minimize else node.fitness

    def state(self) -> dict:
        return {"version": 1, "settings": asdict(self.s), "pool_size": self.n, "fingerprint": self.fingerprint,
                "gen": self.gen,
                "evaluations": self.evaluations, "population": list(self.population), "history": self.history,
                "stopped": self.stopped, "nodes": [asdict(n) for n in self.nodes.values()]}

    def save(self) -> None:
        if self.state_path is not None:
            write_json(self.state_path, self.state())

    def load(self) -> bool:
        """Restore the last saved generation; False when there is no state. ConfigError if the settings differ."""
        if self.state_path is None or not self.state_path.is_file():
            return False
        import json
        blob = json.loads(self.state_path.read_text())
        saved = {k: v for k, v in blob["settings"].items() if k != "budget"}
        now = {k: v for k, v in asdict(self.s).items() if k != "budget"}
        if saved != now or blob["pool_size"] != self.n:
            diff = sorted(k for k in now if saved.get(k) != now[k]) or ["pool_size"]
            raise ConfigError(f"{self.state_path}: saved search state has other settings ({', '.join(diff)}); "
                              f"resume with the same oe_search settings (only budget may change)")
        if blob.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.state_path}: saved search state is over another candidate pool; resume with "
                              f"the same oe_search.candidates")
        self.nodes = {d["id"]: Node(**d) for d in blob["nodes"]}
        self.population, self.history = list(blob["population"]), list(blob["history"])
        self.evaluations, self.gen, self.stopped = int(blob["evaluations"]), int(blob["gen"]), None
        return True

    # ------------------------------------------------------------------ operators
    def select(self, pop: list[Node], rng: np.random.Generator) -> list[Node]:
        """Tournament selection: ``len(pop)`` winners of ``tournament`` aspirants drawn without replacement."""
        out = []
        for _ in range(len(pop)):
            aspirants = [pop[i] for i in rng.choice(len(pop), self.s.tournament, replace=False)]
            out.append(max(aspirants, key=self.key))
        return out

    def candidates(self, rng: np.random.Generator) -> np.ndarray:
        if self.s.mutation_pool >= self.n:
            return np.arange(self.n)
        return rng.choice(self.n, self.s.mutation_pool, replace=False)

    def mutate_image(self, image: int, rng: np.random.Generator) -> int | None:
        cand = self.candidates(rng)
        return nearest_pick(self.distance(image, cand), cand, self.s.duplicate_distance, self.s.one_of_k_best, rng)

    def mate_images(self, a: int, b: int, rng: np.random.Generator) -> tuple[int | None, int | None]:
        kids = []
        for _ in range(2):  # two separate candidate pools, one per child
            cand = self.candidates(rng)
            d = self.distance(a, cand) + self.distance(b, cand)
            kids.append(nearest_pick(d, cand, self.s.duplicate_distance, self.s.one_of_k_best, rng))
        return kids[0], kids[1]

    def step(self, pop: list[Node], gen: int, rng: np.random.Generator) -> tuple[list[Node], dict]:
        """Selection, mating and mutation of one generation (no evaluation). Returns (offspring, events) with
        events = {"mated_pairs": [pair index], "mutated": [slot]}."""
        off = self.select(pop, rng)
        events = {"mated_pairs": [], "mutated": []}
        for p in range(len(off) // 2):
            if rng.random() < self.s.mate_prob:
                a, b = off[2 * p], off[2 * p + 1]
                k1, k2 = self.mate_images(a.image, b.image, rng)
                parents = [a.id] if a.id == b.id else [a.id, b.id]
                for slot, kid in ((2 * p, k1), (2 * p + 1, k2)):
                    if kid is not None:
                        off[slot] = self.new_node(kid, gen, "mate", parents)
                events["mated_pairs"].append(p)
        for i in range(len(off)):
            if rng.random() < self.s.mutation_prob:
                img = self.mutate_image(off[i].image, rng)
                if img is not None:
                    off[i] = self.new_node(img, gen, "mutate", [off[i].id])
                events["mutated"].append(i)
        return off, events

    # ------------------------------------------------------------------ loop
    def _evaluate(self, pop: list[Node], evaluate: Callable[[list[Node]], Sequence[float]]) -> None:
        todo = list({n.id: n for n in pop if n.fitness is None}.values())
        if todo:
            values = list(evaluate(todo))
            if len(values) != len(todo):
                raise RuntimeError(f"fitness evaluator returned {len(values)} values for {len(todo)} individuals")
            for node, v in zip(todo, values):
                if v is None or not math.isfinite(float(v)):
                    raise ValueError(f"fitness of node {node.id} (image {node.image}) is {v!r}")
                node.fitness = float(v)
        self.evaluations += len(todo)

    def _finish_generation(self, gen: int, pop: list[Node], events: dict | None = None) -> None:
        fits = np.array([n.fitness for n in pop])
        self.population = [n.id for n in pop]
        self.history.append({"gen": gen, "population": self.population, "fitness": fits.tolist(),
                             "min": float(fits.min()), "mean": float(fits.mean()), "max": float(fits.max()),
                             "std": float(fits.std()), "evaluations": self.evaluations, **(events or {})})
        self.gen = gen
        self.save()

    def _invalid_count(self, pop: list[Node]) -> int:
        return len({n.id for n in pop if n.fitness is None})

    def _over_budget(self, pop: list[Node], gen: int) -> bool:
        need = self._invalid_count(pop)
        if self.evaluations + need > self.s.max_evaluations and self.s.budget is not None:
            self.stopped = (f"budget: generation {gen} needs {need} more evaluations, {self.evaluations} of "
                            f"{self.s.budget} used")
            return True
        return False

    def run(self, evaluate: Callable[[list[Node]], Sequence[float]], log=None) -> Search:
        """Run (or resume) the search; ``evaluate(nodes) -> fitness values`` (the hook for a job launcher)."""
        say = log or (lambda *a: None)
        if self.load():
            say("resuming the OE search after generation %d (%d evaluations done)", self.gen, self.evaluations)
        if self.s.mode == "random":
            return self._run_random(evaluate, say)
        if self.gen < 0:
            rng = self.rng(0)
            pop = [self.new_node(i, 0, "init") for i in rng.integers(self.n, size=self.s.population)]
            self._evaluate(pop, evaluate)
            self._finish_generation(0, pop)
            say("generation 0: fitness max %.4f mean %.4f min %.4f", *self._summary())
        pop = [self.nodes[i] for i in self.population]
        for gen in range(self.gen + 1, self.s.generations):
            # (re)build the generation from scratch: nodes made by an interrupted attempt are dropped
            self.nodes = {i: n for i, n in self.nodes.items() if n.gen < gen}
            off, events = self.step(pop, gen, self.rng(gen))
            if self._over_budget(off, gen):
                say("stopping: %s", self.stopped)
                break
            self._evaluate(off, evaluate)
            self._finish_generation(gen, off, events)
            pop = off
            say("generation %d: fitness max %.4f mean %.4f min %.4f (%d mated pairs, %d mutations, %d evaluations)",
                gen, *self._summary(), len(events["mated_pairs"]), len(events["mutated"]), self.evaluations)
        self.save()
        return self

    def _run_random(self, evaluate, say) -> Search:
        images = self.rng(0).choice(self.n, self.s.samples, replace=False)
        if self.s.budget is not None and self.s.budget < len(images):
            self.stopped = f"budget: {self.s.budget} of {len(images)} random images evaluated"
            images = images[:self.s.budget]
        chunks = [images[i:i + self.s.population] for i in range(0, len(images), self.s.population)]
        for gen in range(self.gen + 1, len(chunks)):
            self.nodes = {i: n for i, n in self.nodes.items() if n.gen < gen}
            pop = [self.new_node(img, gen, "random") for img in chunks[gen]]
            self._evaluate(pop, evaluate)
            self._finish_generation(gen, pop)
            say("random search chunk %d/%d: %d images evaluated, fitness so far max %.4f min %.4f", gen + 1,
                len(chunks), self.evaluations, self.best(1)[0].fitness, self.worst_first(1)[0].fitness)
        self.save()
        return self

    def _summary(self) -> tuple[float, float, float]:
        h = self.history[-1]
        return h["max"], h["mean"], h["min"]

    # ------------------------------------------------------------------ results
    def evaluated(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.fitness is not None]

    def best(self, k: int) -> list[Node]:
        """The ``k`` highest-fitness evaluated nodes, one per image."""
        return self._ranked(k, reverse=True)

    def worst_first(self, k: int) -> list[Node]:
        """The ``k`` lowest-fitness evaluated nodes, one per image."""
        return self._ranked(k, reverse=False)

    def _ranked(self, k: int, reverse: bool) -> list[Node]:
        seen, out = set(), []
        for n in sorted(self.evaluated(), key=lambda n: (n.fitness, -n.id), reverse=reverse):
            if n.image not in seen:
                seen.add(n.image)
                out.append(n)
        return out[:k]

    def genealogy(self, image_names: Sequence[str] | None = None) -> dict:
        """The ``evolution.json`` content (see the module doc)."""
        nodes = []
        for n in self.nodes.values():
            d = asdict(n)
            if image_names is not None:
                d["path"] = image_names[n.image]
            nodes.append(d)
        target = self.worst_first(1) if self.s.minimize else self.best(1)
        return {"oracle_note": ORACLE_NOTE, "settings": asdict(self.s), "pool_size": self.n,
                "objective": "minimise (worst OE image)" if self.s.minimize else "maximise (best OE image)",
                "generations_done": self.gen + 1, "evaluations": self.evaluations, "stopped": self.stopped,
                "found": asdict(target[0]) if target else None, "history": self.history, "nodes": nodes}
