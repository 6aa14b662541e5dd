"""Wake-sleep benchmark: a fair, tuned comparison of WS, RWS, BiHM and their natural
versions (Várady, Volpi, Malagò & Ay 2022) on binarized MNIST.

Protocol (issue 13): a sigmoid belief net (``--layers``, default 784-100-10; the paper's
deeper 784-200-200-10 with ``--layers 784 200 200 10``) and its recognition net, K = 10
particles, minibatch 32, the first ``--train-points`` (5000) training images, the same
number of updates for every run (``--updates``, 471 = 3 epochs), one thread.

* **Tuning**: each algorithm with its own best setting from a small grid: plain SGD
  at lr ``--grid-sgd`` {0.01, 0.03, 0.05} x damping ``--grid-damping`` {0.01, 0.03} for the
  natural algorithms (their preconditioner sets the step), Adam at lr ``--grid-adam``
  {0.01, 0.03} for the others, each with a constant rate and a cosine decay to 0 over
  the run (``--schedules``), and every algorithm at its defaults besides. Every run is
  repeated for each of ``--seeds`` (0 1); the best setting is the one with the highest
  validation log-likelihood after ``--updates``, averaged over the seeds.
* **Curves**: validation ``log p̂(x)`` (importance-sampled, S = ``--valid-samples``
  (100) on the first ``--valid-points`` (500) validation images; for BiHM ``log p*(x)``
  with its partition function) every ``--every`` updates. The best run of each
  algorithm is scored at the end on ``--test-points`` (500) test images with S =
  ``--test-samples`` (1000), and so is each algorithm's run at its defaults.
* **Time**: milliseconds per update of every algorithm at its defaults from
  ``--rounds`` (15) rounds in one process, the algorithms in a random order each round:
  RWS's median times the median over rounds of each algorithm's ratio to RWS within the
  round (printed with its quartiles and the load average). The seconds axis of a curve
  is its update count times that figure, so that load from other processes on a
  shared machine cannot favour one algorithm. The equal wall-clock budget is RWS's
  time for ``--updates`` updates; algorithms faster than RWS keep training until they
  reach it.
* **Targets** (per seed): NRWS per update <= 1.3x RWS; at equal updates NRWS beats
  tuned RWS by >= 2 nats; NRWS reaches tuned RWS's final validation value in <= 0.6x
  the updates and <= 0.8x the time; NBiHM likewise against tuned BiHM.

Prints ``name: value`` lines and writes ``--out`` (JSON) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import random
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch

from posterity.datasets import binarized_mnist
from posterity.infer import WakeSleep
from posterity.infer.wake_sleep import DEFAULTS, helmholtz_machine

ALGORITHMS = ("ws", "rws", "nrws", "bihm", "nbihm")
NATURAL = ("nrws", "nbihm")
PEERS = {"nrws": "rws", "nbihm": "bihm"}


def make_engine(algorithm: str, layers: tuple[int, ...], particles: int, **options
                ) -> WakeSleep:
    model, guide = helmholtz_machine(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return WakeSleep(model, guide, algorithm=algorithm, num_particles=particles, **options)


def ms_per_update(args, train: torch.Tensor) -> tuple[dict[str, float], dict[str, list]]:
    """Ms per update of every algorithm at its defaults from interleaved rounds (a random
    order each round), on the scale of RWS: RWS's median times the median over rounds of
    each algorithm's per-round ratio to RWS (a ratio within one round is robust to load
    from other processes drifting between rounds); and the per-round ratios. Every
    algorithm trains on the same stream of fresh minibatches (shuffled passes over
    ``train``), as in a run: repeating a few batches overfits them, which gives
    particles self-normalized weights small enough to underflow and distorts the
    times."""
    if train.shape[0] < args.batch_size:
        raise ValueError(f"--train-points must be at least the batch size "
                         f"{args.batch_size}, got {train.shape[0]}")
    warmup = 12  # past the first refresh
    needed = warmup + args.rounds * args.speed_updates
    shuffle = torch.Generator().manual_seed(args.seed)
    stream: list[torch.Tensor] = []
    while len(stream) < needed:
        permutation = torch.randperm(train.shape[0], generator=shuffle)
        stream += [train[permutation[i: i + args.batch_size]]
                   for i in range(0, train.shape[0] - args.batch_size + 1, args.batch_size)]
    engines = {}
    for algorithm in ALGORITHMS:
        pyro.set_rng_seed(args.seed)
        engine = make_engine(algorithm, args.layers, args.particles)
        engine.prepare(train[:100])
        for batch in stream[:warmup]:
            engine.step(batch)
        engines[algorithm] = engine
    times: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    order = random.Random(args.seed)
    for r in range(args.rounds):
        batches = stream[warmup + r * args.speed_updates: warmup + (r + 1) * args.speed_updates]
        for algorithm in order.sample(ALGORITHMS, len(ALGORITHMS)):
            engine = engines[algorithm]
            start = time.perf_counter()
            for batch in batches:
                engine.step(batch)
            times[algorithm].append(1e3 * (time.perf_counter() - start) / len(batches))
    ratios = {a: [t / base for t, base in zip(times[a], times["rws"])] for a in ALGORITHMS}
    rws = statistics.median(times["rws"])
    return {a: rws * statistics.median(ratios[a]) for a in ALGORITHMS}, ratios


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def train_run(args, algorithm: str, options: dict, train: torch.Tensor, valid: torch.Tensor,
              updates: int) -> tuple[WakeSleep, dict]:
    """``updates`` updates from seed ``args.seed``; the validation curve every
    ``args.every`` updates (and after the last)."""
    pyro.set_rng_seed(args.seed)
    # the run's length, for a cosine schedule (the natural algorithms' default one)
    options = {"total_steps": updates, **options}
    engine = make_engine(algorithm, args.layers, args.particles, **options)
    data = engine.prepare(train)
    valid = engine.prepare(valid, "valid")
    shuffle = torch.Generator().manual_seed(args.seed)
    curve_updates, curve_values, losses = [], [], []
    trained = 0.0
    done = 0
    snapshot = None
    while done < updates:
        order = torch.randperm(data.shape[0], generator=shuffle)
        for begin in range(0, data.shape[0], args.batch_size):
            start = time.perf_counter()
            losses.append(engine.step(data[order[begin: begin + args.batch_size]])["loss"])
            trained += time.perf_counter() - start
            done += 1
            if not math.isfinite(losses[-1]):
                break
            if done == args.updates:  # the state at equal updates, for the test score
                snapshot = copy.deepcopy((engine.model.state_dict(), engine.guide.state_dict()))
            if done % args.every == 0 or done in (updates, args.updates):
                curve_updates.append(done)
                curve_values.append(engine.validate(valid, args.valid_samples)[
                    "valid_log_likelihood"])
            if done == updates:
                break
        if losses and not math.isfinite(losses[-1]):
            curve_updates.append(done)
            curve_values.append(-math.inf)
            break
    if snapshot is not None:
        engine.model.load_state_dict(snapshot[0])
        engine.guide.load_state_dict(snapshot[1])
    return engine, {"options": options, "updates": curve_updates, "valid": curve_values,
                    "train_seconds_measured": trained, "final_train_loss": losses[-1]}


def value_at(curve_updates: list[int], values: list[float], update: float) -> float | None:
    """The curve's last value at or before ``update``."""
    seen = [v for u, v in zip(curve_updates, values) if u <= update + 1e-9]
    return seen[-1] if seen else None


def first_reaching(curve_updates: list[int], values: list[float], target: float
                   ) -> int | None:
    for u, v in zip(curve_updates, values):
        if v >= target:
            return u
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def lr_grid(args, algorithm: str, updates: int) -> list[dict]:
    """The tuning grid of ``algorithm``: plain SGD x damping for the natural algorithms,
    Adam for the others, each with a constant rate and (``--schedules``) a cosine decay
    to 0 over the run's ``updates``."""
    # a constant rate is an explicit scheduler=None: the natural algorithms' default
    # schedule is a cosine
    schedules = [{"scheduler": "cosine", "total_steps": updates} if name == "cosine"
                 else {"scheduler": None} for name in args.schedules]
    if algorithm in NATURAL:
        return [{"optimizer": "sgd", "lr": lr, "damping": damping, **schedule}
                for schedule in schedules for damping in args.grid_damping
                for lr in args.grid_sgd]
    return [{"optimizer": "adam", "lr": lr, **schedule}
            for schedule in schedules for lr in args.grid_adam]


def _key(options: dict) -> str:
    """The options as a string, without the run length and without ``None`` entries (a
    constant rate is keyed as no scheduler)."""
    return json.dumps({k: v for k, v in options.items() if k != "total_steps" and v is not None},
                      sort_keys=True)


def budget_updates(args, budget_seconds: float, ms: float) -> int:
    """``--updates``, or more for an algorithm faster than RWS: as many as fit in RWS's
    time for ``--updates`` (less a rounding tolerance, so RWS itself runs exactly those)."""
    return max(args.updates, math.ceil(budget_seconds * 1e3 / ms - 1e-6))


def default_key(algorithm: str) -> str:
    """The options key of ``algorithm``'s defaults (:data:`DEFAULTS`), spelled as the grid
    spells them (a constant rate is no ``scheduler`` entry), so that a grid point equal
    to the defaults is not run twice."""
    options = dict(DEFAULTS[algorithm])
    if algorithm in NATURAL and "damping" not in options:
        options["damping"] = inspect.signature(WakeSleep).parameters["damping"].default
    return _key(options)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[784, 100, 10])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-points", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=471)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--grid-sgd", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    parser.add_argument("--grid-damping", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--grid-adam", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--schedules", nargs="+", default=["constant", "cosine"],
                        choices=["constant", "cosine"])
    parser.add_argument("--no-defaults", action="store_true",
                        help="do not add a run of every algorithm at its defaults")
    parser.add_argument("--extra", type=str, default="[]",
                        help="JSON list of [algorithm, options] runs beside the grid")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--speed-updates", type=int, default=20)
    parser.add_argument("--valid-points", type=int, default=500)
    parser.add_argument("--valid-samples", type=int, default=100)
    parser.add_argument("--test-points", type=int, default=500)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--test-algorithms", nargs="+", default=list(ALGORITHMS),
                        help="the algorithms whose best run gets the final test score")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the interleaved time per update and its ratios")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="bench_out/wake_sleep.json")
    args = parser.parse_args()
    args.layers = tuple(args.layers)
    args.seed = args.seeds[0]
    torch.set_num_threads(1)
    train, valid, test = binarized_mnist()
    train, valid = train[: args.train_points], valid[: args.valid_points]
    test = test[: args.test_points]
    name = "-".join(map(str, args.layers))
    results: dict = {"settings": {k: v for k, v in vars(args).items()}}

    load = os.getloadavg()[0]
    ms, ratios = ms_per_update(args, train)
    results["ms_per_update"] = ms
    results["load_average"] = [load, os.getloadavg()[0]]
    print(f"# one thread, SBN {name}, K = {args.particles}, batch {args.batch_size}; "
          f"{args.rounds} interleaved rounds at each algorithm's defaults; load average "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    for algorithm, value in ms.items():
        print(f"wake_sleep/{name}/ms_per_update {algorithm}: {value:.2f}", flush=True)
    results["time_ratio_quartiles"] = {}
    for natural, peer in PEERS.items():
        per_round = [a / b for a, b in zip(ratios[natural], ratios[peer])]
        low, high = _quartiles(per_round)
        results["time_ratio_quartiles"][natural] = [low, high]
        print(f"wake_sleep/{name}/{natural}_vs_{peer} time per update: "
              f"{ms[natural] / ms[peer]:.2f} (per-round quartiles {low:.2f}-{high:.2f}; "
              f"target <= 1.3)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        out.write_text(json.dumps(results, indent=2))
        return
    budget_seconds = args.updates * ms["rws"] / 1e3
    results["budget_seconds"] = budget_seconds

    # runs[algorithm][options key][seed] = run; engines kept for the test score
    runs: dict[str, dict[str, dict[int, dict]]] = {}
    engines: dict[tuple[str, str, int], WakeSleep] = {}
    grid_keys: dict[str, set[str]] = {}
    for seed in args.seeds:
        args.seed = seed
        plan = []
        for algorithm in args.algorithms:
            # faster algorithms keep training to RWS's budget
            updates = budget_updates(args, budget_seconds, ms[algorithm])
            grid = lr_grid(args, algorithm, updates)
            grid_keys[algorithm] = {_key(o) for o in grid}
            plan += [(algorithm, options, updates) for options in grid]
            if not args.no_defaults and default_key(algorithm) not in grid_keys[algorithm]:
                plan.append((algorithm, {}, updates))
        for algorithm, options in json.loads(args.extra):
            plan.append((algorithm, options, budget_updates(args, budget_seconds,
                                                            ms[algorithm])))
        for algorithm, options, updates in plan:
            engine, run = train_run(args, algorithm, options, train, valid, updates)
            run["seed"] = seed
            run["seconds"] = [u * ms[algorithm] / 1e3 for u in run["updates"]]
            run["valid_at_updates"] = value_at(run["updates"], run["valid"], args.updates)
            run["valid_at_budget"] = value_at(run["updates"], run["valid"],
                                              budget_seconds * 1e3 / ms[algorithm])
            key = _key(options) if options else "defaults"
            runs.setdefault(algorithm, {}).setdefault(key, {})[seed] = run
            engines[algorithm, key, seed] = engine
            print(f"wake_sleep/{name}/{algorithm} seed {seed} {key}: valid "
                  f"{_fmt(run['valid_at_updates'])} after {args.updates} updates, "
                  f"{_fmt(run['valid_at_budget'])} at {budget_seconds:.1f} s; curve "
                  f"{[round(v, 1) for v in run['valid']]}", flush=True)
            results["runs"] = {a: {k: {str(sd): r for sd, r in v.items()} for k, v in d.items()}
                               for a, d in runs.items()}
            out.write_text(json.dumps(results, indent=2))  # partial results as they come

    # the best grid point of each algorithm: highest validation value after the updates,
    # averaged over the seeds
    best: dict[str, str] = {}
    for algorithm, by_key in runs.items():
        scored = [(_mean([r["valid_at_updates"] for r in by_seed.values()]), key)
                  for key, by_seed in by_key.items() if key in grid_keys.get(algorithm, ())]
        scored = [(v, k) for v, k in scored if v is not None and math.isfinite(v)]
        if scored:
            best[algorithm] = max(scored)[1]
    summary: dict = {}
    for algorithm, key in best.items():
        summary[algorithm] = {"options": key, "seeds": {}}
        defaults = "defaults" if "defaults" in runs[algorithm] else default_key(algorithm)
        summary[algorithm]["defaults_options"] = default_key(algorithm)
        summary[algorithm]["defaults_are_best"] = defaults == key
        for label in [key] + ([defaults] if defaults in runs[algorithm] and defaults != key
                              else []):
            for seed, run in runs[algorithm][label].items():
                entry = {"valid_at_updates": run["valid_at_updates"],
                         "valid_at_budget": run["valid_at_budget"]}
                if algorithm in args.test_algorithms:
                    pyro.set_rng_seed(seed)
                    engine = engines[algorithm, label, seed]
                    final = engine.log_likelihood(engine.prepare(test, "test"),
                                                  args.test_samples)
                    entry["test_log_likelihood"] = float(final.mean())
                    entry["test_stderr"] = float(final.std() / math.sqrt(final.numel()))
                    print(f"wake_sleep/{name}/{algorithm} seed {seed} {label}: test log p(x) = "
                          f"{final.mean():.2f} ± {entry['test_stderr']:.2f} "
                          f"(S = {args.test_samples}, {final.numel()} images)", flush=True)
                summary[algorithm].setdefault(
                    "seeds" if label == key else "defaults", {})[str(seed)] = entry
    results["best"] = summary

    targets: dict = {}
    for natural, peer in PEERS.items():
        if natural not in best or peer not in best:
            continue
        per_seed = {}
        for seed in args.seeds:
            nat = runs[natural][best[natural]].get(seed)
            ref = runs[peer][best[peer]].get(seed)
            if nat is None or ref is None:
                continue
            target = ref["valid_at_updates"]
            reach = first_reaching(nat["updates"], nat["valid"], target)
            tests = summary[natural]["seeds"].get(str(seed), {}), \
                summary[peer]["seeds"].get(str(seed), {})
            gain = None if "test_log_likelihood" not in tests[0] or \
                "test_log_likelihood" not in tests[1] else \
                tests[0]["test_log_likelihood"] - tests[1]["test_log_likelihood"]
            per_seed[str(seed)] = {
                "peer_final_valid": target,
                "test_gain_at_equal_updates": gain,
                "valid_gain_at_equal_updates": nat["valid_at_updates"] - target,
                "valid_gain_at_equal_time": None if nat["valid_at_budget"] is None
                or ref["valid_at_budget"] is None
                else nat["valid_at_budget"] - ref["valid_at_budget"],
                "updates_to_reach_peer_final": reach,
                "updates_ratio": None if reach is None else reach / args.updates,
                "time_ratio_to_reach": None if reach is None
                else reach * ms[natural] / (args.updates * ms[peer]),
            }
            t = per_seed[str(seed)]
            shown = "not reached" if reach is None else \
                f"{t['updates_ratio']:.2f} of the updates (target <= 0.6), " \
                f"{t['time_ratio_to_reach']:.2f} of the time (target <= 0.8)"
            print(f"wake_sleep/{name}/{natural}_vs_{peer} seed {seed}: test gain at equal "
                  f"updates {_fmt(gain)} nats (target >= 2); valid "
                  f"{t['valid_gain_at_equal_updates']:+.2f}, at equal time "
                  f"{_fmt(t['valid_gain_at_equal_time'])}; reaches {peer}'s final "
                  f"({target:.2f}): {shown}", flush=True)
        targets[natural] = {"time_ratio": ms[natural] / ms[peer], "seeds": per_seed}
    results["targets"] = targets

    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results, name, args))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(results: dict, name: str, args) -> str:
    lines = [f"# Wake-sleep on binarized MNIST, SBN {name}",
             "",
             f"K = {args.particles}, batch {args.batch_size}, {args.train_points} training "
             f"images, {args.updates} updates, seeds {args.seeds}; validation S = "
             f"{args.valid_samples} on {args.valid_points} images, test S = "
             f"{args.test_samples} on {args.test_points} images; one thread.",
             "",
             "| algorithm | ms/update |", "|---|---|"]
    lines += [f"| {a} | {v:.2f} |" for a, v in results["ms_per_update"].items()]
    lines += ["", f"Equal wall-clock budget: {results['budget_seconds']:.1f} s "
              "(RWS's time for the updates).", "",
              "| algorithm | options | seed | valid @ updates | valid @ budget | curve |",
              "|---|---|---|---|---|---|"]
    for algorithm, by_key in results["runs"].items():
        for key, by_seed in by_key.items():
            for seed, run in by_seed.items():
                curve = ", ".join(f"{u}:{v:.1f}" for u, v in zip(run["updates"], run["valid"]))
                lines.append(f"| {algorithm} | {key} | {seed} | "
                             f"{_fmt(run['valid_at_updates'])} | "
                             f"{_fmt(run['valid_at_budget'])} | {curve} |")
    lines += ["", "| best | options | seed | test log p(x) |", "|---|---|---|---|"]
    for algorithm, s in results["best"].items():
        for label in ("seeds", "defaults"):
            for seed, entry in s.get(label, {}).items():
                if "test_log_likelihood" in entry:
                    lines.append(f"| {algorithm} | {s['options'] if label == 'seeds' else label}"
                                 f" | {seed} | {entry['test_log_likelihood']:.2f} ± "
                                 f"{entry['test_stderr']:.2f} |")
    lines += ["", "| target | seed | value |", "|---|---|---|"]
    for natural, t in results["targets"].items():
        lines.append(f"| {natural}: time_ratio | - | {t['time_ratio']:.3f} |")
        for seed, values in t["seeds"].items():
            for key, value in values.items():
                shown = "not reached" if value is None else (
                    f"{value:.3f}" if isinstance(value, float) else str(value))
                lines.append(f"| {natural}: {key} | {seed} | {shown} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
