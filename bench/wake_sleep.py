"""Wake-sleep benchmark: five algorithms at equal wall-clock time on binarized MNIST, and
the cost of an update against RWS and Pyro's ``ReweightedWakeSleep``.

Set-up (the issue's): sigmoid belief net 784-200-200-10 and its recognition net, K = 10
particles, minibatch 32, Adam (lr 3e-4 unless ``--lr``), one thread.

* **Speed**: milliseconds per update of each algorithm, and of Pyro's
  ``ReweightedWakeSleep`` (wake-q only, ``insomnia = 1``, its default; our RWS is timed
  with the same setting for that ratio) driving the same modules, interleaved rounds.
* **Quality**: each algorithm trains for ``--budget`` seconds of updates (validation not
  counted). After every epoch the first ``--valid-points`` validation images are
  evaluated with S = 100 (for BiHM: log p*(x), including its partition function). At the
  end the first ``--test-points`` test images get S = ``--test-samples`` (5000).
* **NRWS against RWS**: the update-time ratio (target ≤ 2) and the training time NRWS
  needs to reach RWS's final validation log-likelihood (target ≤ 0.5 × RWS's budget).

Prints ``name: value`` lines and writes ``bench_out/wake_sleep.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import pyro
import torch

from posterity.datasets import binarized_mnist
from posterity.infer import WakeSleep
from posterity.infer.wake_sleep import helmholtz_machine

LAYERS = (784, 200, 200, 10)
ALGORITHMS = ("ws", "rws", "nrws", "bihm", "nbihm")
LITERATURE = {"rws": -85.5, "bihm": -84.8}  # Bornschein & Bengio 2015; Bornschein et al. 2016


def engine_for(algorithm: str, args, **overrides) -> WakeSleep:
    model, guide = helmholtz_machine(LAYERS)
    options = {"num_particles": args.particles, "lr": args.lr, "damping": args.damping,
               "refresh_every": args.refresh_every}
    options.update(overrides)
    return WakeSleep(model, guide, algorithm=algorithm, **options)


def ms_per_update(engine: WakeSleep, batches: list[torch.Tensor]) -> float:
    for batch in batches[:3]:
        engine.step(batch)
    start = time.perf_counter()
    for batch in batches:
        engine.step(batch)
    return 1e3 * (time.perf_counter() - start) / len(batches)


def pyro_ms_per_update(args, batches: list[torch.Tensor]) -> float:
    from pyro.infer import ReweightedWakeSleep

    model, guide = helmholtz_machine(LAYERS)
    rws = ReweightedWakeSleep(num_particles=args.particles, insomnia=1.0, max_plate_nesting=1)
    params = [*model.parameters(), *guide.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)

    def step(batch):
        optimizer.zero_grad()
        rws.loss_and_grads(model, guide, batch)
        optimizer.step()

    for batch in batches[:3]:
        step(batch)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return 1e3 * (time.perf_counter() - start) / len(batches)


def speed(args, train: torch.Tensor) -> dict:
    batches = list(train[: args.batch_size * args.speed_updates].split(args.batch_size))
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for algorithm in ALGORITHMS:
            pyro.set_rng_seed(0)
            engine = engine_for(algorithm, args)
            engine.prepare(train[:100])
            times.setdefault(algorithm, []).append(ms_per_update(engine, batches))
        pyro.set_rng_seed(0)
        engine = engine_for("rws", args, insomnia=1.0)
        engine.prepare(train[:100])
        times.setdefault("rws_wake_only", []).append(ms_per_update(engine, batches))
        pyro.set_rng_seed(0)
        times.setdefault("pyro_rws_wake_only", []).append(pyro_ms_per_update(args, batches))
    return {name: statistics.median(v) for name, v in times.items()}


def quality(args, train, valid, test) -> dict:
    results = {}
    for algorithm in ALGORITHMS:
        pyro.set_rng_seed(args.seed)
        engine = engine_for(algorithm, args)
        history = engine.fit(train, epochs=10_000, batch_size=args.batch_size,
                             valid=valid[: args.valid_points], time_budget=args.budget,
                             progress=False)
        seconds = list(itertools_accumulate(history.epochs["seconds"]))
        final = engine.log_likelihood(test[: args.test_points], args.test_samples)
        results[algorithm] = {
            "seconds": seconds,
            "valid_log_likelihood": history.epochs["valid_log_likelihood"],
            "updates": len(history.steps["loss"]),
            "test_log_likelihood": float(final.mean()),
            "test_stderr": float(final.std() / math.sqrt(final.numel())),
        }
        if engine.bidirectional:
            results[algorithm]["log_partition"] = history.epochs["log_partition"][-1]
        print(f"wake_sleep/{algorithm}: test log p(x) = {final.mean():.2f} ± "
              f"{results[algorithm]['test_stderr']:.2f} nats after {seconds[-1]:.0f} s "
              f"({results[algorithm]['updates']} updates; valid curve "
              f"{[round(v, 1) for v in history.epochs['valid_log_likelihood']]})", flush=True)
    return results


def itertools_accumulate(values):
    total = 0.0
    for v in values:
        total += v
        yield total


def time_to_reach(curve_seconds: list[float], curve_values: list[float], target: float
                  ) -> float | None:
    for seconds, value in zip(curve_seconds, curve_values):
        if value >= target:
            return seconds
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per algorithm")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--damping", type=float, default=0.2)
    parser.add_argument("--refresh-every", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speed-updates", type=int, default=50)
    parser.add_argument("--valid-points", type=int, default=500)
    parser.add_argument("--test-points", type=int, default=300)
    parser.add_argument("--test-samples", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", default="bench_out/wake_sleep.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, valid, test = binarized_mnist()
    results: dict = {"settings": vars(args)}
    ms = speed(args, train)
    results["ms_per_update"] = ms
    print(f"# one thread, SBN {LAYERS}, K = {args.particles}, batch {args.batch_size}, "
          f"median of {args.rounds} interleaved rounds")
    for name, value in ms.items():
        print(f"wake_sleep/ms_per_update {name}: {value:.2f}")
    print(f"wake_sleep/nrws_vs_rws time per update: {ms['nrws'] / ms['rws']:.2f} (target <= 2)")
    print(f"wake_sleep/rws_vs_pyro time per update: "
          f"{ms['rws_wake_only'] / ms['pyro_rws_wake_only']:.2f} (target <= 1)")
    if not args.skip_quality:
        q = quality(args, train, valid, test)
        results["quality"] = q
        target = q["rws"]["valid_log_likelihood"][-1]
        reach = time_to_reach(q["nrws"]["seconds"], q["nrws"]["valid_log_likelihood"], target)
        results["nrws_time_to_rws_final"] = reach
        shown = "not reached" if reach is None else f"{reach / q['rws']['seconds'][-1]:.2f}"
        print(f"wake_sleep/nrws_time_to_reach_rws_final: {shown} of RWS's time (target <= 0.5; "
              f"RWS final valid {target:.2f})")
        for name, reference in LITERATURE.items():
            print(f"wake_sleep/{name} literature: {reference} (deep nets, long GPU training)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
