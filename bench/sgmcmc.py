"""SG-MCMC benchmark: speed against a hand-written loop and ``posteriors``, and quality on
UCI concrete.

Speed (one process, one thread): a Bayesian MLP 784-100-10 with a categorical
likelihood on random data (N = 10 000), minibatch 128, 1000 SGLD updates. Three ways,
interleaved over several rounds: posterity ``SGLD`` driven by ``pyro.infer.MCMC``
(progress bar off, every 10th update kept), a hand-written PyTorch SGLD loop computing
the same potential, and ``posteriors.sgmcmc.sgld`` where it is installed
(``pip install -e '.[bench]'``).

Quality: UCI concrete (shipped in ``particles``), 90/10 splits over several seeds,
inputs and targets standardized on the training split, a 50-unit MLP sampled with
cyclical SGHMC; test RMSE and log-likelihood in the original units (MPa), against
scale-adapted SGHMC's -3.38 ± 0.24 (Springenberg et al. 2016, table 1).

Prints ``name: value`` lines and writes ``bench_out/sgmcmc.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import MCMC
from torch.nn import functional as F

from posterity.datasets import concrete, standardize
from posterity.infer.sgmcmc import SGHMC, SGLD, CyclicalSchedule
from posterity.infer.sgmcmc.predictive import pointwise_predictive, regression_metrics
from posterity.models import BayesianMLP

N, IN, HIDDEN, OUT, BATCH, STEPS, STEP_SIZE = 10_000, 784, 100, 10, 128, 1000, 1e-5
THIN = 10  # 1000 updates, 100 stored samples of the 79 510 parameters
SPRINGENBERG = (-3.38, 0.24)


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(N, IN, generator=generator), torch.randint(0, OUT, (N,), generator=generator)


def initial_params(generator_seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(generator_seed)
    return {
        "layer0.weight": torch.randn(HIDDEN, IN, generator=g) / math.sqrt(IN),
        "layer0.bias": torch.zeros(HIDDEN),
        "layer1.weight": torch.randn(OUT, HIDDEN, generator=g) / math.sqrt(HIDDEN),
        "layer1.bias": torch.zeros(OUT),
    }


def log_posterior(params, X, y, idx):
    """The same scaled minibatch log joint as BayesianMLP, written by hand."""
    log_prior = sum(
        -0.5 * params[f"layer{i}.{k}"].pow(2).sum() * fan_in
        for i, fan_in in ((0, IN), (1, HIDDEN)) for k in ("weight", "bias")
    )
    h = F.relu(F.linear(X[idx], params["layer0.weight"], params["layer0.bias"]))
    logits = F.linear(h, params["layer1.weight"], params["layer1.bias"])
    return log_prior - (N / BATCH) * F.cross_entropy(logits, y[idx], reduction="sum")


def run_hand_written(X, y) -> float:
    params = {k: v.clone() for k, v in initial_params().items()}
    start = time.perf_counter()
    for _ in range(STEPS):
        idx = torch.randperm(N)[:BATCH]
        leaves = {k: v.requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(log_posterior(leaves, X, y, idx), list(leaves.values()))
        with torch.no_grad():
            params = {
                k: v + 0.5 * STEP_SIZE * g + math.sqrt(STEP_SIZE) * torch.randn_like(v)
                for (k, v), g in zip(leaves.items(), grads)
            }
    return time.perf_counter() - start


def run_posterity(X, y) -> float:
    model = BayesianMLP(IN, (HIDDEN,), OUT, likelihood="categorical", subsample_size=BATCH)
    kernel = SGLD(model, step_size=STEP_SIZE, initial_params=initial_params(), thin=THIN)
    mcmc = MCMC(kernel, num_samples=STEPS // THIN, warmup_steps=0, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(X, y)
    return time.perf_counter() - start


def run_posteriors(X, y) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from posteriors.sgmcmc import sgld
    except ImportError:
        return None

    def log_post(params, batch):
        return log_posterior(params, X, y, batch), torch.tensor(0.0)

    # posteriors' SGLD: θ += lr ∇log p + N(0, 2 lr T); lr = ε/2 is the same chain
    transform = sgld.build(log_post, lr=STEP_SIZE / 2)
    state = transform.init(initial_params())
    start = time.perf_counter()
    for _ in range(STEPS):
        state, _ = transform.update(state, torch.randperm(N)[:BATCH], inplace=True)
    return time.perf_counter() - start


def speed(rounds: int) -> dict:
    X, y = data()
    times: dict[str, list[float]] = {"posterity": [], "torch": [], "posteriors": []}
    for _ in range(rounds):
        times["posterity"].append(run_posterity(X, y))
        times["torch"].append(run_hand_written(X, y))
        result = run_posteriors(X, y)
        if result is not None:
            times["posteriors"].append(result)
    return {k: statistics.median(v) for k, v in times.items() if v}


def quality(seeds: int, hidden: int, steps: int) -> dict:
    X_all, y_all = concrete()
    results = []
    for seed in range(seeds):
        order = torch.randperm(len(X_all), generator=torch.Generator().manual_seed(seed))
        cut = int(0.9 * len(X_all))
        train, test = order[:cut], order[cut:]
        X_train, X_test = standardize(X_all[train], X_all[test])
        y_mean, y_std = y_all[train].mean(), y_all[train].std()
        y_train = (y_all[train] - y_mean) / y_std
        pyro.set_rng_seed(seed)
        model = BayesianMLP(8, (hidden,), 1, subsample_size=32)
        schedule = CyclicalSchedule(2e-3, num_cycles=4, total_steps=steps, exploration_ratio=0.25)
        kernel = SGHMC(model, step_size=schedule, friction=10.0, thin=steps * 3 // 4 // 200)
        mcmc = MCMC(kernel, num_samples=200, warmup_steps=0, disable_progbar=True)
        mcmc.run(X_train, y_train)
        samples = mcmc.get_samples(group_by_chain=True)
        predictive = pointwise_predictive(model, samples, X_test, (y_all[test] - y_mean) / y_std)
        metrics = regression_metrics(predictive, (y_all[test] - y_mean) / y_std)
        # back to MPa: RMSE scales by y_std, the log density shifts by -log y_std
        results.append({"rmse": metrics["rmse"] * float(y_std),
                        "log_likelihood": metrics["log_likelihood"] - math.log(float(y_std))})
    ll = torch.tensor([r["log_likelihood"] for r in results])
    rmse = torch.tensor([r["rmse"] for r in results])
    return {"splits": results, "log_likelihood_mean": float(ll.mean()),
            "log_likelihood_se": float(ll.std() / math.sqrt(seeds)),
            "rmse_mean": float(rmse.mean()), "rmse_se": float(rmse.std() / math.sqrt(seeds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quality-steps", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", default="bench_out/sgmcmc.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {"speed_seconds": speed(args.rounds)}
    s = results["speed_seconds"]
    print(f"# one thread, MLP {IN}-{HIDDEN}-{OUT}, batch {BATCH}, {STEPS} SGLD updates, "
          f"median of {args.rounds} interleaved rounds")
    print(f"sgmcmc/sgld posterity_vs_torch: {s['posterity'] / s['torch']:.3f} "
          f"(posterity {s['posterity']:.2f} s, torch {s['torch']:.2f} s)")
    if "posteriors" in s:
        print(f"sgmcmc/sgld posterity_vs_posteriors: {s['posterity'] / s['posteriors']:.3f} "
              f"(posteriors {s['posteriors']:.2f} s)")
    if not args.skip_quality:
        q = quality(args.seeds, args.hidden, args.quality_steps)
        results["concrete"] = q
        print(f"sgmcmc/concrete_test_ll: {q['log_likelihood_mean']:.2f} ± "
              f"{q['log_likelihood_se']:.2f} (RMSE {q['rmse_mean']:.2f} ± {q['rmse_se']:.2f} MPa, "
              f"{args.seeds} splits; Springenberg et al. 2016: {SPRINGENBERG[0]} ± "
              f"{SPRINGENBERG[1]})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
