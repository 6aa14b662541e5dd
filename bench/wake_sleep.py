"""Wake-sleep benchmark: a fair, tuned comparison of WS, RWS, BiHM and their natural
versions (Várady, Volpi, Malagò & Ay 2022) on binarized MNIST.

Protocol (issue 13): a sigmoid belief net (``--layers``, default 784-100-10; the paper's
deeper 784-200-200-10 with ``--layers 784 200 200 10``) and its recognition net, K = 10
particles, minibatch 32, the first ``--train-points`` (5000) training images, the same
number of updates for every run (``--updates``, 471 = 3 epochs), one thread.

* **Tuning**: each algorithm with its own best learning rate from a small grid: plain
  SGD {0.003, 0.01, 0.03} for the natural algorithms (their preconditioner sets the
  step), Adam {0.003, 0.01, 0.03} for the others (``--grid-*``). Seed ``--seed`` for
  every run; the best rate is the one with the highest validation log-likelihood after
  the last update.
* **Curves**: validation ``log p̂(x)`` (importance-sampled, S = ``--valid-samples``
  (100) on the first ``--valid-points`` (500) validation images; for BiHM ``log p*(x)``
  with its partition function) every ``--every`` updates. The best run of each
  algorithm is scored at the end on ``--test-points`` (500) test images with S =
  ``--test-samples`` (1000).
* **Time**: milliseconds per update of every algorithm at its defaults, medians of
  ``--rounds`` interleaved rounds in one process. The seconds axis of a curve is its
  update count times that median, so that load from other processes on a shared
  machine cannot favour one algorithm. The equal wall-clock budget is RWS's time for
  ``--updates`` updates; algorithms faster than RWS keep training until they reach it.
* **Targets**: NRWS per update <= 1.3x RWS; at equal updates NRWS beats tuned RWS by
  >= 2 nats; NRWS reaches tuned RWS's final validation value in <= 0.6x the updates
  and <= 0.8x the time; NBiHM likewise against tuned BiHM.

Prints ``name: value`` lines and writes ``--out`` (JSON) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch

from posterity.datasets import binarized_mnist
from posterity.infer import WakeSleep
from posterity.infer.wake_sleep import helmholtz_machine

ALGORITHMS = ("ws", "rws", "nrws", "bihm", "nbihm")
NATURAL = ("nrws", "nbihm")
PEERS = {"nrws": "rws", "nbihm": "bihm"}


def make_engine(algorithm: str, layers: tuple[int, ...], particles: int, **options
                ) -> WakeSleep:
    model, guide = helmholtz_machine(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return WakeSleep(model, guide, algorithm=algorithm, num_particles=particles, **options)


def ms_per_update(args, train: torch.Tensor) -> dict[str, float]:
    """Median ms per update of every algorithm at its defaults, interleaved rounds."""
    batches = list(train[: args.batch_size * args.speed_updates].split(args.batch_size))
    engines = {}
    for algorithm in ALGORITHMS:
        pyro.set_rng_seed(args.seed)
        engine = make_engine(algorithm, args.layers, args.particles)
        engine.prepare(train[:100])
        for batch in batches[:12]:  # warm-up, past the first refresh
            engine.step(batch)
        engines[algorithm] = engine
    times: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    for _ in range(args.rounds):
        for algorithm, engine in engines.items():
            start = time.perf_counter()
            for batch in batches:
                engine.step(batch)
            times[algorithm].append(1e3 * (time.perf_counter() - start) / len(batches))
    return {a: statistics.median(v) for a, v in times.items()}


def train_run(args, algorithm: str, options: dict, train: torch.Tensor, valid: torch.Tensor,
              updates: int) -> tuple[WakeSleep, dict]:
    """``updates`` updates from seed ``args.seed``; the validation curve every
    ``args.every`` updates (and after the last)."""
    pyro.set_rng_seed(args.seed)
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


def lr_grid(args, algorithm: str) -> list[dict]:
    if algorithm in NATURAL:
        return [{"optimizer": "sgd", "lr": lr} for lr in args.grid_sgd]
    return [{"optimizer": "adam", "lr": lr} for lr in args.grid_adam]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[784, 100, 10])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-points", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=471)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--grid-sgd", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--grid-adam", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--extra", type=str, default="[]",
                        help="JSON list of [algorithm, options] runs beside the grid")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--speed-updates", type=int, default=20)
    parser.add_argument("--valid-points", type=int, default=500)
    parser.add_argument("--valid-samples", type=int, default=100)
    parser.add_argument("--test-points", type=int, default=500)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--test-algorithms", nargs="+", default=list(ALGORITHMS),
                        help="the algorithms whose best run gets the final test score")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the interleaved time per update and its ratios")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_out/wake_sleep.json")
    args = parser.parse_args()
    args.layers = tuple(args.layers)
    torch.set_num_threads(1)
    train, valid, test = binarized_mnist()
    train, valid = train[: args.train_points], valid[: args.valid_points]
    test = test[: args.test_points]
    name = "-".join(map(str, args.layers))
    results: dict = {"settings": {k: v for k, v in vars(args).items()}}

    ms = ms_per_update(args, train)
    results["ms_per_update"] = ms
    print(f"# one thread, SBN {name}, K = {args.particles}, batch {args.batch_size}; "
          f"median of {args.rounds} interleaved rounds at each algorithm's defaults", flush=True)
    for algorithm, value in ms.items():
        print(f"wake_sleep/{name}/ms_per_update {algorithm}: {value:.2f}", flush=True)
    for natural, peer in PEERS.items():
        print(f"wake_sleep/{name}/{natural}_vs_{peer} time per update: "
              f"{ms[natural] / ms[peer]:.2f} (target <= 1.3)", flush=True)
    if args.speed_only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        return
    budget_seconds = args.updates * ms["rws"] / 1e3
    results["budget_seconds"] = budget_seconds

    runs: dict[str, list[dict]] = {}
    best: dict[str, tuple[WakeSleep, dict]] = {}
    plan = [(a, o) for i in range(max(len(args.grid_sgd), len(args.grid_adam)))
            for a in args.algorithms for o in lr_grid(args, a)[i: i + 1]]
    plan += [tuple(item) for item in json.loads(args.extra)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for algorithm, options in plan:
        # faster algorithms keep training to RWS's budget
        updates = max(args.updates, math.ceil(budget_seconds * 1e3 / ms[algorithm]))
        engine, run = train_run(args, algorithm, options, train, valid, updates)
        run["seconds"] = [u * ms[algorithm] / 1e3 for u in run["updates"]]
        run["valid_at_updates"] = value_at(run["updates"], run["valid"], args.updates)
        run["valid_at_budget"] = value_at(run["updates"], run["valid"],
                                          budget_seconds * 1e3 / ms[algorithm])
        runs.setdefault(algorithm, []).append(run)
        print(f"wake_sleep/{name}/{algorithm} {options}: valid {_fmt(run['valid_at_updates'])} "
              f"after {args.updates} updates, {_fmt(run['valid_at_budget'])} at "
              f"{budget_seconds:.1f} s; curve {[round(v, 1) for v in run['valid']]}",
              flush=True)
        in_grid = options in lr_grid(args, algorithm)
        if in_grid and run["valid_at_updates"] is not None and (
                algorithm not in best
                or run["valid_at_updates"] > best[algorithm][1]["valid_at_updates"]):
            best[algorithm] = (engine, run)
        results["runs"] = runs
        out.write_text(json.dumps(results, indent=2))  # partial results as they come

    summary: dict = {}
    for algorithm, (engine, run) in best.items():
        if algorithm not in args.test_algorithms:
            continue
        pyro.set_rng_seed(args.seed)
        final = engine.log_likelihood(engine.prepare(test, "test"), args.test_samples)
        summary[algorithm] = {
            "options": run["options"],
            "valid_at_updates": run["valid_at_updates"],
            "valid_at_budget": run["valid_at_budget"],
            "test_log_likelihood": float(final.mean()),
            "test_stderr": float(final.std() / math.sqrt(final.numel())),
        }
        print(f"wake_sleep/{name}/{algorithm} best {run['options']}: test log p(x) = "
              f"{final.mean():.2f} ± {summary[algorithm]['test_stderr']:.2f} "
              f"(S = {args.test_samples}, {final.numel()} images)", flush=True)
    results["best"] = summary

    targets: dict = {}
    for natural, peer in PEERS.items():
        if natural not in best or peer not in best:
            continue
        nat, ref = best[natural][1], best[peer][1]
        target = ref["valid_at_updates"]
        reach = first_reaching(nat["updates"], nat["valid"], target)
        targets[natural] = {
            "time_ratio": ms[natural] / ms[peer],
            "test_gain_at_equal_updates": summary[natural]["test_log_likelihood"]
            - summary[peer]["test_log_likelihood"] if natural in summary and peer in summary
            else None,
            "valid_gain_at_equal_updates": nat["valid_at_updates"] - ref["valid_at_updates"],
            "valid_gain_at_equal_time": None if nat["valid_at_budget"] is None
            or ref["valid_at_budget"] is None else nat["valid_at_budget"] - ref["valid_at_budget"],
            "updates_to_reach_peer_final": reach,
            "updates_ratio": None if reach is None else reach / args.updates,
            "time_ratio_to_reach": None if reach is None
            else reach * ms[natural] / (args.updates * ms[peer]),
        }
        t = targets[natural]
        gain = t["test_gain_at_equal_updates"]
        print(f"wake_sleep/{name}/{natural}_vs_{peer} test gain at equal updates: "
              f"{'-' if gain is None else f'{gain:+.2f}'} nats (target >= 2); valid "
              f"{t['valid_gain_at_equal_updates']:+.2f}; at equal time "
              f"{_fmt(t['valid_gain_at_equal_time'])}")
        shown = "not reached" if reach is None else \
            f"{t['updates_ratio']:.2f} of the updates (target <= 0.6), " \
            f"{t['time_ratio_to_reach']:.2f} of the time (target <= 0.8)"
        print(f"wake_sleep/{name}/{natural}_reaches_{peer}_final ({target:.2f}): {shown}",
              flush=True)
    results["targets"] = targets

    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results, name, args))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(results: dict, name: str, args) -> str:
    lines = [f"# Wake-sleep on binarized MNIST, SBN {name}",
             "",
             f"K = {args.particles}, batch {args.batch_size}, {args.train_points} training "
             f"images, {args.updates} updates, seed {args.seed}; validation S = "
             f"{args.valid_samples} on {args.valid_points} images, test S = "
             f"{args.test_samples} on {args.test_points} images; one thread.",
             "",
             "| algorithm | ms/update |", "|---|---|"]
    lines += [f"| {a} | {v:.2f} |" for a, v in results["ms_per_update"].items()]
    lines += ["", f"Equal wall-clock budget: {results['budget_seconds']:.1f} s "
              "(RWS's time for the updates).", "",
              "| algorithm | options | valid @ updates | valid @ budget | curve |",
              "|---|---|---|---|---|"]
    for algorithm, runs in results["runs"].items():
        for run in runs:
            curve = ", ".join(f"{u}:{v:.1f}" for u, v in zip(run["updates"], run["valid"]))
            lines.append(f"| {algorithm} | {run['options']} | {_fmt(run['valid_at_updates'])} | "
                         f"{_fmt(run['valid_at_budget'])} | {curve} |")
    lines += ["", "| best | options | test log p(x) |", "|---|---|---|"]
    for algorithm, s in results["best"].items():
        lines.append(f"| {algorithm} | {s['options']} | {s['test_log_likelihood']:.2f} ± "
                     f"{s['test_stderr']:.2f} |")
    lines += ["", "| target | value |", "|---|---|"]
    for natural, t in results["targets"].items():
        for key, value in t.items():
            shown = "not reached" if value is None else (
                f"{value:.3f}" if isinstance(value, float) else str(value))
            lines.append(f"| {natural}: {key} | {shown} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
