"""SMC benchmark: PaRIS and the bootstrap filter against ``particles``, scaling in N, and
PPG against PaRIS at equal compute.

One process, one thread, stochastic volatility (μ = -1, φ = 0.95, σ = 0.3) with
N = 1000 unless stated:

* **PaRIS** (Ñ = 2, accept-reject backward kernel with the exact fallback, resampling
  at every step for both): time per step of posterity over T = 1000 against
  ``particles``' ``Paris`` collector (which loops over particles in Python) over
  ``--peer-steps`` steps. Target: ≥ 100× faster.
* **Filter**: the bootstrap filter, systematic resampling at ESS < N/2, T = 1000,
  against ``particles.SMC`` with the same settings. Target: no slower.
* **Scaling**: time per step of the filter and of PaRIS for N = 10³, 10⁴, 10⁵.
* **Accuracy**: on a linear-Gaussian model (T = 50) the exact E[Σ_t x_t | y] comes from
  the RTS smoother; PPG (N particles, k iterations with burn-in k/5) is compared with
  PaRIS given the same number of particle-steps (N·(k + 1), the initial path
  included), over independent replicates: bias, standard deviation and MSE.
* **GPU**: with ``--device cuda``, the filter and PaRIS at N = 10⁶.
* **Particle Gibbs, batched chains**: sweeps per second of 4 chains run as one
  ``[4, N, d]`` system against the same 4 chains run one after another (N = 100,
  T = 100). Target: ≥ 3×.
* **Checked bound**: PaRIS with the rejection kernel's bound check (every computed
  density compared with ``transition_log_bound``) against the same kernel trusting the
  bound. Target: the check costs ≤ 5%.

Prints ``name: value`` lines and writes ``bench_out/smc.json``. ``--only pg bound``
runs just the named parts (``peer``, ``scaling``, ``accuracy``, ``pg``, ``bound``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

from posterity.infer.smc import PPG, PaRIS, ParticleFilter, ParticleGibbs
from posterity.models import LinearGaussianSSM, StochasticVolatility

MU, PHI, SIGMA = -1.0, 0.95, 0.3


def state(x_prev, x, y, t):
    return x


def peer_model():
    from particles import state_space_models

    class StochVol(state_space_models.StochVol):
        def upper_bound_log_pt(self, t):
            return -0.5 * math.log(2 * math.pi) - math.log(self.sigma)

    return StochVol(mu=MU, rho=PHI, sigma=SIGMA)


def run_peer(ys: torch.Tensor, num_particles: int, paris: bool) -> float:
    # the same resampling as ours: adaptive (ESS < N/2) for the filter, at every step
    # for PaRIS
    """Seconds for one ``particles`` run (filter only, or with the Paris collector)."""
    import particles
    from particles import collectors, state_space_models

    fk = state_space_models.Bootstrap(ssm=peer_model(), data=ys[:, 0].double().numpy())
    fk.add_func = lambda t, xp, x: x
    collect = [collectors.Paris(Nparis=2)] if paris else []
    smc = particles.SMC(fk=fk, N=num_particles, resampling="systematic",
                        ESSrmin=1.0 if paris else 0.5,
                        collect=collect, store_history=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        smc.run()
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_filter(ssm, ys, num_particles) -> float:
    return timed(lambda: ParticleFilter(ssm, num_particles, progress=False).run(ys))


def run_paris(ssm, ys, num_particles) -> float:
    return timed(lambda: PaRIS(ssm, state, num_particles, progress=False).run(ys))


def against_particles(rounds: int, steps: int, peer_steps: int, num_particles: int) -> dict:
    pyro.set_rng_seed(0)
    ssm = StochasticVolatility(MU, PHI, SIGMA)
    ys = ssm.simulate(steps).observations
    seconds: dict[str, list[float]] = {k: [] for k in
                                       ("filter", "peer_filter", "paris", "peer_paris")}
    for _ in range(rounds):  # interleaved, so that machine noise hits all four alike
        seconds["filter"].append(run_filter(ssm, ys, num_particles))
        seconds["peer_filter"].append(run_peer(ys, num_particles, paris=False))
        seconds["paris"].append(run_paris(ssm, ys, num_particles))
        seconds["peer_paris"].append(run_peer(ys[:peer_steps], num_particles, paris=True))
    per_step = {k: statistics.median(v) / (peer_steps if k == "peer_paris" else steps)
                for k, v in seconds.items()}
    return {
        "seconds_per_step": per_step,
        "filter_speedup": per_step["peer_filter"] / per_step["filter"],
        "paris_speedup": per_step["peer_paris"] / per_step["paris"],
    }


def scaling(sizes: list[int], steps: int, device: str) -> dict:
    pyro.set_rng_seed(1)
    ssm = StochasticVolatility(MU, PHI, SIGMA).to(device)
    ys = ssm.simulate(steps).observations
    rows = {}
    for n in sizes:
        run_filter(ssm, ys[:5], n)  # warm-up
        rows[n] = {"filter": run_filter(ssm, ys, n) / steps,
                   "paris": run_paris(ssm, ys, n) / steps}
    return rows


def accuracy(budgets: list[tuple[int, int]], replicates: int, steps: int) -> list[dict]:
    """PPG with ``N`` particles and ``k`` iterations against PaRIS with ``N (k + 1)``."""
    torch.manual_seed(2)
    ssm = LinearGaussianSSM(1, 1, A=0.9, Q=0.5, C=1.0, R=1.0)
    with torch.no_grad():
        ys = ssm.simulate(steps).observations
        truth = float(ssm.rts_smoother(ys)["mean"].sum())
    rows = []
    for num_particles, iters in budgets:
        burn_in = iters // 5
        paris_particles = num_particles * (iters + 1)
        errors: dict[str, list[float]] = {"ppg": [], "paris": []}
        for r in range(replicates):
            pyro.set_rng_seed(100 + r)
            ppg = PPG(ssm, state, num_particles, num_iters=iters, burn_in=burn_in,
                      progress=False).run(ys).estimate
            errors["ppg"].append(float(ppg.sum()) - truth)
            paris = PaRIS(ssm, state, paris_particles, progress=False).run(ys).estimate
            errors["paris"].append(float(paris.sum()) - truth)
        row = {"ppg_particles": num_particles, "ppg_iters": iters, "burn_in": burn_in,
               "paris_particles": paris_particles}
        for name, e in errors.items():
            e = torch.tensor(e)
            row[name] = {"bias": float(e.mean()), "bias_se": float(e.std() / math.sqrt(len(e))),
                         "sd": float(e.std()), "mse": float(e.pow(2).mean())}
        rows.append(row)
    return rows


def particle_gibbs_chains(rounds: int, num_particles: int = 100, steps: int = 100,
                          chains: int = 4, iters: int = 10) -> dict:
    """Seconds per sweep of ``chains`` chains batched and run one after another."""
    pyro.set_rng_seed(3)
    ssm = StochasticVolatility(MU, PHI, SIGMA)
    ys = ssm.simulate(steps).observations
    sampler = ParticleGibbs(ssm, num_particles, progress=False)
    sampler.run(ys, num_iters=2, num_chains=chains)  # warm-up
    batched, sequential = [], []
    for _ in range(rounds):  # interleaved
        batched.append(timed(lambda: sampler.run(ys, num_iters=iters, num_chains=chains)))
        sequential.append(timed(lambda: [sampler.run(ys, num_iters=iters, num_chains=1)
                                         for _ in range(chains)]))
    per_sweep = {"batched": statistics.median(batched) / (iters * chains),
                 "sequential": statistics.median(sequential) / (iters * chains)}
    return {"seconds_per_chain_sweep": per_sweep,
            "sweeps_per_second": {k: 1 / v for k, v in per_sweep.items()},
            "speedup": per_sweep["sequential"] / per_sweep["batched"],
            "num_particles": num_particles, "steps": steps, "chains": chains}


def bound_check_cost(rounds: int, sizes: list[int], steps: int = 200) -> dict:
    """PaRIS (rejection kernel) seconds per step with and without the bound check."""
    pyro.set_rng_seed(4)
    ssm = StochasticVolatility(MU, PHI, SIGMA)
    ys = ssm.simulate(steps).observations
    rows = {}
    for n in sizes:
        checked = PaRIS(ssm, state, n, backward="rejection", progress=False)
        trusted = PaRIS(ssm, state, n, backward="rejection", progress=False)
        trusted.backward.check_bound = False
        checked.run(ys[:10])  # warm-up
        times: dict[str, list[float]] = {"checked": [], "unchecked": []}
        for _ in range(rounds):  # interleaved, alternating which goes first
            for name, smoother in (("checked", checked), ("unchecked", trusted)):
                times[name].append(timed(lambda smoother=smoother: smoother.run(ys)))
        per_step = {k: statistics.median(v) / steps for k, v in times.items()}
        rows[n] = {"seconds_per_step": per_step,
                   "overhead": per_step["checked"] / per_step["unchecked"] - 1,
                   "violations": len(checked.backward.bound_violations)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--peer-steps", type=int, default=20,
                        help="time steps of particles' Paris (about 2 s each at N = 1000)")
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench_out/smc.json")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=("peer", "scaling", "accuracy", "pg", "bound"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(0)
    results: dict = {}
    parts = set(args.only or ("peer", "scaling", "accuracy", "pg", "bound"))
    if "pg" in parts and args.device == "cpu":
        pg = particle_gibbs_chains(max(args.rounds, 3))
        results["particle_gibbs_chains"] = pg
        s = pg["seconds_per_chain_sweep"]
        print(f"smc/particle_gibbs batched_vs_sequential: {pg['speedup']:.2f} (4 chains, "
              f"N = 100, T = 100: batched {1e3 * s['batched']:.2f} ms per chain-sweep, "
              f"sequential {1e3 * s['sequential']:.2f} ms)")
    if "bound" in parts:
        rows = bound_check_cost(max(args.rounds, 5), [1_000, 10_000])
        results["bound_check"] = rows
        for n, row in rows.items():
            s = row["seconds_per_step"]
            print(f"smc/paris checked_vs_unchecked_bound N={n}: "
                  f"{s['checked'] / s['unchecked']:.3f} (checked {1e3 * s['checked']:.3f} "
                  f"ms/step, unchecked {1e3 * s['unchecked']:.3f} ms/step; "
                  f"{row['violations']} violations)")
    if "peer" in parts and args.device == "cpu":
        peer = against_particles(args.rounds, args.steps, args.peer_steps, 1000)
        results["against_particles"] = peer
        s = peer["seconds_per_step"]
        print(f"# one thread, stochastic volatility, N = 1000, median of {args.rounds} rounds")
        print(f"smc/filter speedup_vs_particles: {peer['filter_speedup']:.2f} "
              f"(posterity {1e3 * s['filter']:.3f} ms/step, particles "
              f"{1e3 * s['peer_filter']:.3f} ms/step, T = {args.steps})")
        print(f"smc/paris speedup_vs_particles: {peer['paris_speedup']:.0f} "
              f"(posterity {1e3 * s['paris']:.2f} ms/step over T = {args.steps}, particles "
              f"{1e3 * s['peer_paris']:.0f} ms/step over T = {args.peer_steps})")
    sizes = [1_000, 10_000, 100_000] + ([1_000_000] if args.device != "cpu" else [])
    if "scaling" in parts:
        rows = scaling(sizes, 100, args.device)
        results["scaling_seconds_per_step"] = rows
        for n, row in rows.items():
            print(f"smc/scaling N={n}: filter {1e3 * row['filter']:.3f} ms/step, "
                  f"PaRIS {1e3 * row['paris']:.3f} ms/step ({args.device})")
    if "accuracy" in parts and args.device == "cpu":
        table = accuracy([(8, 25), (16, 25), (32, 25)], args.replicates, 50)
        results["ppg_vs_paris"] = table
        print("# E[Σ x_t | y] on a linear-Gaussian model, T = 50, errors against RTS, "
              f"{args.replicates} replicates")
        for row in table:
            ppg, paris = row["ppg"], row["paris"]
            print(f"smc/accuracy PPG N={row['ppg_particles']} k={row['ppg_iters']}: bias "
                  f"{ppg['bias']:+.3f} ± {ppg['bias_se']:.3f}, sd {ppg['sd']:.3f}, MSE "
                  f"{ppg['mse']:.4f} | PaRIS N={row['paris_particles']}: bias "
                  f"{paris['bias']:+.3f} ± {paris['bias_se']:.3f}, sd {paris['sd']:.3f}, "
                  f"MSE {paris['mse']:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
