"""Distributed benchmark: the same job in two processes against one process.

Each rank is a fresh process with torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) that joins a gloo group and runs one thread; the
one-process reference is one such process outside any group, so both pay the same
start-up, which is not timed. Each process starts in a session of its own: with the
kernel's autogroup scheduling the processes of one session share one session's CPU
share, so on a machine loaded by other sessions a 2-process job started from one shell
(``torchrun``, or ``distributed.run_local``: ``--one-session``) gets no more CPU than a
1-process job. Rounds alternate the order (1, 2, 2, 1, ...) so that a change in the
machine's load hits both; every figure is the median over the rounds of the slowest
rank's wall time. A third setup runs two processes *apart*, without a process group,
each on its half of the job (half the rows of every minibatch, half the particles): the
same compute per process with no communication, so its ratio to one process is the
best the machine's cores allow (the ``ceiling``). On this project's 2-vCPU machine two
single-thread processes do not get twice the arithmetic of one: measured in the same
run, the ceiling says how much of a missed target is the hardware and ``ratio /
ceiling`` how much is the group's communication and waiting. Each rank's CPU time is
recorded too: on a machine loaded by others
the wall-clock ratio measures contention as much as the design, while the CPU ratio
(the busiest rank's CPU seconds against the one process's) is what the ratio would be
with a free core per process, communication waits aside.

* **VI epoch**: ``AmortizedVI`` (IWAE, K = 5) on a VAE 784-200-20 with a Bernoulli
  likelihood, binary data in global minibatches of 256: the median epoch of a 3-epoch
  ``fit`` as the loop logs it (the slowest rank's ``seconds``); the whole call, with
  ``fit``'s one-time checks and set-up, is kept as ``fit_seconds``. Target: ≤ 0.6× the
  one-process time.
* **Particle filter**: stochastic volatility, N = 10⁶ particles in all, resampling
  (systematic) at every step, the worst case for communication; time per step, the
  median of 3 runs of T = 20 after one untimed run of the same size (the first run of a
  process pays for fresh memory, which a long series amortizes; the same for PaRIS and
  PPG). Target ≤ 0.6×.
* **PaRIS**: the same model, N = 10⁵, Ñ = 2 backward draws, smoothing E[Σ x_t | y];
  time per step. Target ≤ 0.65×.
* **PPG**: the same model, N = 10⁴ particles per sweep in all (spread over the ranks,
  ``parallel="particles"``), T = 50, Ñ = 2; time per conditional SMC + PaRIS sweep. No
  target in the issue; PaRIS's (≤ 0.65×) is shown.
* **SG-MCMC**: SGLD on a Bayesian MLP 784-100-10 (categorical likelihood, N = 10 000
  random rows, minibatch 128) through ``pyro.infer.MCMC``, one chain per process;
  updates per second of all chains together. Target ≥ 1.8×.

Every collective is counted (bytes this rank contributes, per call), which gives the
communication per update or per step that the scaling note of ``docs/distributed.md``
builds on: a ring all-reduce of S bytes costs about ``2 (W - 1) / W · S / bandwidth``
per rank, an all-gather of ``s`` bytes per rank ``(W - 1) · s / bandwidth``.

The ratios with the one-time costs included are printed too (``vi_fit_ratio``: the
whole ``fit`` call; ``filter_first_run_ratio`` and the like: the first run of each
process).

Prints a table and ``name: value`` lines, and writes ``bench_out/distributed.json``
(with the load average before and after each round: the project machine is shared).
``--quick``
runs smaller sizes (one round) to check that everything runs; ``--only vi filter``
runs the named parts (``vi``, ``filter``, ``paris``, ``sgmcmc``, ``ppg``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from posterity.infer import distributed

PARTS = ("vi", "filter", "paris", "sgmcmc", "ppg")
TARGETS = {"vi": ("time", 0.6), "filter": ("time", 0.6), "paris": ("time", 0.65),
           "ppg": ("time", 0.65),  # no target in the issue: PaRIS's
           "sgmcmc": ("rate", 1.8)}
FULL = {"vi_rows": 12_800, "vi_batch": 256, "vi_epochs": 3, "repeats": 3,
        "filter_particles": 10**6, "filter_steps": 20,
        "paris_particles": 10**5, "paris_steps": 20, "sgmcmc_steps": 1000, "rounds": 3,
        "ppg_particles": 10**4, "ppg_steps": 50, "ppg_sweeps": 3}
QUICK = {"vi_rows": 2_560, "vi_batch": 256, "vi_epochs": 2, "repeats": 1,
         "filter_particles": 10**5, "filter_steps": 5,
         "paris_particles": 10**4, "paris_steps": 5, "sgmcmc_steps": 60, "rounds": 1,
         "ppg_particles": 10**3, "ppg_steps": 10, "ppg_sweeps": 2}


# --- counting what the collectives carry ------------------------------------------------


@contextlib.contextmanager
def traffic() -> Iterator[dict[str, list[float]]]:
    """Count calls and bytes (this rank's contribution) of every ``torch.distributed``
    collective the engines call within the block: ``{name: [calls, bytes]}``."""
    counts: dict[str, list[float]] = {}
    originals: dict[str, Callable[..., Any]] = {}

    def size(name: str, args: tuple, kwargs: dict) -> int:
        if name in ("all_gather_object", "broadcast_object_list"):
            return len(pickle.dumps(args[1] if name == "all_gather_object" else args[0]))
        tensor = args[1] if name in ("all_gather", "all_gather_into_tensor") else args[0]
        tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
        return sum(t.numel() * t.element_size() for t in tensors)

    def counted(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            record = counts.setdefault(name, [0, 0])
            record[0] += 1
            record[1] += size(name, args, kwargs)
            return original(*args, **kwargs)
        return call

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast",
                 "all_gather_object", "broadcast_object_list", "reduce_scatter",
                 "all_to_all", "all_to_all_single"):
        if hasattr(dist, name):
            originals[name] = getattr(dist, name)
            setattr(dist, name, counted(name, originals[name]))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def _timed(run: Callable[[], Any]) -> tuple[float, float, dict[str, list[float]]]:
    """Wall seconds of ``run()`` on the slowest rank, this rank's CPU seconds, and its
    traffic."""
    distributed.barrier()
    with traffic() as counts:
        start, cpu = time.perf_counter(), time.process_time()
        run()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    slowest = distributed.all_reduce_max(torch.tensor([seconds], dtype=torch.float64))
    return float(slowest[0]), cpu, counts


def _steady(run: Callable[[], Any], repeats: int
            ) -> tuple[float, float, dict[str, list[float]], float]:
    """:func:`_timed` ``repeats`` times after a first ``run()`` of the same size: the
    medians of the slowest rank's wall seconds and of this rank's CPU seconds, the last
    repeat's traffic, and the first run's wall seconds (kept apart: the first run of a
    process pays one-time costs, fresh memory and the allocator's growth, that a long
    series amortizes)."""
    first = _timed(run)[0]
    timings = [_timed(run) for _ in range(repeats)]
    return (statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings),
            timings[-1][2], first)


# --- the jobs (run in every process) ------------------------------------------------------


def bench_vi(config: dict) -> dict:
    from posterity.guides import GaussianEncoder
    from posterity.infer import AmortizedVI
    from posterity.models import VAE

    rows, batch = config["vi_rows"] // config["split"], config["vi_batch"] // config["split"]
    data = (torch.rand(rows, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()

    def engine() -> AmortizedVI:
        model = VAE(784, 20, (200,), likelihood="bernoulli")
        guide = GaussianEncoder(784, 20, (200,))
        return AmortizedVI(model, guide, objective="iwae", num_particles=5, lr=1e-3)

    engine().fit(data[: 2 * batch], epochs=1, batch_size=batch, seed=0, progress=False)
    vi = engine()
    parameters = sum(p.numel() * p.element_size() for p in vi.parameters())
    epochs = config["vi_epochs"]
    fit_seconds, cpu, counts = _timed(lambda: vi.fit(data, epochs=epochs, batch_size=batch,
                                                     seed=1, progress=False))
    updates = math.ceil(rows / batch)
    # an epoch's seconds as the loop logs them (the slowest rank's), without fit's set-up
    seconds = statistics.median(vi.history["seconds"][-epochs:])
    return {"seconds": seconds, "cpu": cpu / epochs, "unit": "s per epoch",
            "fit_seconds": fit_seconds, "updates": updates, "parameter_bytes": parameters,
            "traffic": {op: [c / epochs, b / epochs] for op, (c, b) in counts.items()},
            "per": updates}


def _sv(steps: int):
    from posterity.models import StochasticVolatility

    torch.manual_seed(0)  # the same series on every rank
    ssm = StochasticVolatility()
    return ssm, ssm.simulate(T=steps).observations


def bench_filter(config: dict) -> dict:
    from posterity.infer.smc import ParticleFilter

    n, steps = config["filter_particles"] // config["split"], config["filter_steps"]
    ssm, ys = _sv(steps)
    pf = ParticleFilter(ssm, n, ess_threshold=1.0, progress=False)
    seconds, cpu, counts, first = _steady(lambda: pf.run(ys), config["repeats"])
    return {"seconds": seconds / steps, "cpu": cpu / steps, "unit": "s per step",
            "first_run_seconds": first / steps,
            "traffic": counts, "per": steps}


def bench_paris(config: dict) -> dict:
    from posterity.infer.smc import PaRIS

    n, steps = config["paris_particles"] // config["split"], config["paris_steps"]
    ssm, ys = _sv(steps)

    paris = PaRIS(ssm, lambda x_prev, x, y, t: x, num_particles=n, progress=False)
    seconds, cpu, counts, first = _steady(lambda: paris.run(ys), config["repeats"])
    return {"seconds": seconds / steps, "cpu": cpu / steps, "unit": "s per step",
            "first_run_seconds": first / steps,
            "traffic": counts, "per": steps}


def bench_sgmcmc(config: dict) -> dict:
    import pyro
    from pyro.infer import MCMC

    from posterity.infer.sgmcmc import SGLD
    from posterity.models import BayesianMLP

    steps = config["sgmcmc_steps"]
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(10_000, 784, generator=generator)
    y = torch.randint(0, 10, (10_000,), generator=generator)
    pyro.set_rng_seed(0)

    def chain(num: int) -> MCMC:
        model = BayesianMLP(784, (100,), 10, likelihood="categorical", subsample_size=128)
        kernel = SGLD(model, step_size=1e-5, thin=10)
        return MCMC(kernel, num_samples=num // 10, warmup_steps=0, disable_progbar=True)

    chain(20).run(X, y)  # warm-up
    mcmc = chain(steps)
    seconds, cpu, counts = _timed(lambda: mcmc.run(X, y))
    updates = steps * distributed.world_size() * config["split"]  # one chain per process
    return {"seconds": seconds, "cpu": cpu, "rate": updates / seconds, "unit": "updates per s",
            "traffic": counts, "per": steps}


def bench_ppg(config: dict) -> dict:
    from posterity.infer.smc import PPG
    from posterity.infer.smc import across_ranks as ranks

    n, steps, sweeps = (config["ppg_particles"] // config["split"], config["ppg_steps"],
                        config["ppg_sweeps"])
    ssm, ys = _sv(steps)
    ppg = PPG(ssm, lambda x_prev, x, y, t: x, num_particles=n, num_iters=1, burn_in=0,
              progress=False)
    reference = ppg.run(ys).path  # warm-up, and the first reference path
    generator = ranks.shared_generator() if distributed.is_initialized() else None

    def run() -> None:
        path = reference
        for _ in range(sweeps):
            path = ppg.sweep(ys, path, generator)[1]

    seconds, cpu, counts, first = _steady(run, config["repeats"])
    return {"seconds": seconds / sweeps, "first_run_seconds": first / sweeps,
            "cpu": cpu / sweeps, "unit": "s per sweep",
            "traffic": counts, "per": sweeps * steps}


BENCHES = {"vi": bench_vi, "filter": bench_filter, "paris": bench_paris,
           "sgmcmc": bench_sgmcmc, "ppg": bench_ppg}


def suite(parts: list[str], config: dict) -> dict:
    """Every part of ``parts`` in this process (module level: run by each rank)."""
    os.environ["POSTERITY_PROGRESS"] = "0"
    torch.set_num_threads(1)
    return {name: BENCHES[name](config) for name in parts}


# --- the driver --------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _worker(out: str, parts: list[str], config: dict) -> None:
    """A rank started by :func:`launch`: join the group (if there is one), run the
    suite, write this rank's results to ``out``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed.init_process_group("gloo")
    try:
        results = suite(parts, config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(out).write_text(json.dumps(results))


def launch(procs: int, parts: list[str], config: dict, sessions: bool,
           group: bool = True) -> list[dict]:
    """Every rank's results of :func:`suite` in ``procs`` fresh processes (one thread
    each), each in a session of its own unless ``sessions`` is false.

    With ``group=False`` the processes run side by side without a process group, each
    on its ``1/procs`` share of the job (the rows of a minibatch, the particles): the
    same compute per process as the ranks of a group, with no communication. Its time
    against one process is the best ratio the machine's cores allow."""
    config = {**config, "split": 1 if group else procs}
    if not sessions and group:
        return distributed.run_local(suite, procs, args=(parts, config), timeout=3000)
    import socket
    import subprocess
    import tempfile

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="posterity-bench-"))
    children = []
    for rank in range(procs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "POSTERITY_PROGRESS": "0"}
        if procs > 1 and group:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(procs),
                       LOCAL_WORLD_SIZE=str(procs), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        out = folder / f"rank{rank}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out),
                   "--only", *parts, "--config", json.dumps(config)]
        children.append((subprocess.Popen(command, env=env, start_new_session=sessions), out))
    try:
        for child, _ in children:
            if child.wait(timeout=3000):
                raise RuntimeError(f"a rank exited with status {child.returncode}")
    finally:
        for child, _ in children:
            if child.poll() is None:
                os.killpg(child.pid, 9)
    return [json.loads(out.read_text()) for _, out in children]


SETUPS = {"one": (1, True), "two": (2, True), "apart": (2, False)}


def run_rounds(parts: list[str], config: dict, sessions: bool) -> dict:
    """``{setup: [round results]}`` for the setups of :data:`SETUPS` (one process, two
    ranks of a group, two processes apart), rotating which runs first."""
    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    order = list(SETUPS)
    for round_ in range(config["rounds"]):
        for setup in order[round_ % 3:] + order[: round_ % 3]:
            procs, group = SETUPS[setup]
            started, before = time.perf_counter(), load()
            ranks = launch(procs, parts, config, sessions, group)
            results = ranks[0]
            if not group:  # the slowest process sets the time, as for the ranks
                for name in parts:
                    results[name]["seconds"] = max(r[name]["seconds"] for r in ranks)
                    if "rate" in results[name]:
                        results[name]["rate"] = min(r[name]["rate"] for r in ranks)
            for name in parts:
                results[name]["cpu_by_rank"] = [r[name]["cpu"] for r in ranks]
                results[name]["traffic_by_rank"] = [r[name]["traffic"] for r in ranks]
            results["load"] = [before, load()]
            runs[setup].append(results)
            print(f"round {round_ + 1}, {setup}: "
                  + ", ".join(f"{n} {results[n]['seconds']:.4g} s" for n in parts)
                  + f" ({time.perf_counter() - started:.0f} s with start-up; load "
                    f"{before} -> {load()})", flush=True)
    return runs


def summarize(parts: list[str], runs: dict) -> dict:
    summary = {}
    for name in parts:
        kind, target = TARGETS[name]
        if kind == "time":
            shown = {setup: statistics.median(r[name]["seconds"] for r in rounds)
                     for setup, rounds in runs.items()}
            ratio, ceiling = shown["two"] / shown["one"], shown["apart"] / shown["one"]
            met = ratio <= target
        else:  # throughput of all chains: 2 chains in 2 processes vs 1 chain in one
            shown = {setup: statistics.median(r[name]["rate"] for r in rounds)
                     for setup, rounds in runs.items()}
            ratio, ceiling = shown["two"] / shown["one"], shown["apart"] / shown["one"]
            met = ratio >= target
        # the busiest rank's CPU seconds (per unit of work) against the one process's
        cpu_one = statistics.median(max(r[name]["cpu_by_rank"]) for r in runs["one"])
        cpu_two = statistics.median(max(r[name]["cpu_by_rank"]) for r in runs["two"])
        cpu_ratio = cpu_two / cpu_one if kind == "time" else 2 * cpu_one / cpu_two
        traffic = runs["two"][-1][name]["traffic"]
        per = runs["two"][-1][name]["per"]
        summary[name] = {
            "unit": runs["one"][0][name]["unit"], "one_process": shown["one"],
            "two_processes": shown["two"], "two_apart": shown["apart"], "ratio": ratio,
            "target": f"{'<=' if kind == 'time' else '>='} {target}", "met": met,
            "ceiling": ceiling, "communication": ratio / ceiling, "cpu_ratio": cpu_ratio,
            "rounds": {setup: [r[name]["seconds"] for r in rounds]
                       for setup, rounds in runs.items()},
            "bytes_per_unit_rank0": {op: b / per for op, (_, b) in traffic.items()},
            "calls_per_unit_rank0": {op: c / per for op, (c, _) in traffic.items()},
        }
        if name == "vi":
            summary[name]["parameter_bytes"] = runs["two"][-1][name]["parameter_bytes"]
        for key in ("first_run_seconds", "fit_seconds"):  # with one-time costs, for the record
            if key in runs["one"][0][name]:
                one, two = (statistics.median(r[name][key] for r in runs[setup])
                            for setup in ("one", "two"))
                summary[name][key.replace("seconds", "ratio")] = two / one
    return summary


def print_table(summary: dict) -> None:
    """``ratio`` is two ranks against one process; ``ceiling`` two processes apart (the
    same per-process work, no group) against one process, the best the cores allow;
    ``ratio / ceiling`` what the group's communication and waits cost on top."""
    print(f"{'part':8} {'unit':14} {'1 process':>11} {'2 ranks':>10} {'2 apart':>10} "
          f"{'ratio':>7} {'target':>8}  {'met':4} {'ceiling':>8} {'ratio/ceil':>10} "
          f"{'CPU ratio':>9}")
    for name, row in summary.items():
        print(f"{name:8} {row['unit']:14} {row['one_process']:11.4g} "
              f"{row['two_processes']:10.4g} {row['two_apart']:10.4g} {row['ratio']:7.3f} "
              f"{row['target']:>8}  {'yes' if row['met'] else 'NO':4} {row['ceiling']:8.3f} "
              f"{row['communication']:10.3f} {row['cpu_ratio']:9.3f}")
    for name, row in summary.items():
        for key in ("first_run_ratio", "fit_ratio"):
            if key in row:
                print(f"{name}_{key}: {row[key]:.3f}")
        for op, value in row["bytes_per_unit_rank0"].items():
            calls = row["calls_per_unit_rank0"][op]
            print(f"{name}_{op}_bytes_per_{'update' if name in ('vi', 'sgmcmc') else 'step'}:"
                  f" {value:.0f} ({calls:.2f} calls)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--vi-batch", type=int, default=None,
                        help="global minibatch of the VI part (default 256): the compute per "
                             "update grows with it while the gradient all-reduce does not")
    parser.add_argument("--out", default="bench_out/distributed.json")
    parser.add_argument("--one-session", action="store_true",
                        help="start the ranks with distributed.run_local, in this session")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.only, json.loads(args.config))
        return 0
    config = dict(QUICK if args.quick else FULL)
    if args.rounds:
        config["rounds"] = args.rounds
    if args.vi_batch:
        config["vi_batch"] = args.vi_batch
        config["vi_rows"] = max(config["vi_rows"], 8 * args.vi_batch)
    before = load()
    print(f"load average before: {before} on {os.cpu_count()} cores", flush=True)
    runs = run_rounds(args.only, config, sessions=not args.one_session)
    summary = summarize(args.only, runs)
    after = load()
    print_table(summary)
    print(f"load average after: {after}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "load_before": before, "load_after": after,
                               "sessions": not args.one_session,
                               "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "cores": os.cpu_count(), "torch": torch.__version__,
                               "summary": summary, "runs": runs}, indent=2, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # spawned ranks import us
    sys.exit(main())
