"""Multi-Rate VAE benchmark: one MR-VAE against five separately trained β-VAEs.

On binarized MNIST (784-200-200-50 tanh, batch 100, one thread) one MR-VAE is trained
with β log-uniform on [0.01, 10] (once without and once with a β warm-up over the first
third of the updates), and one β-VAE at each β in {0.01, 0.1, 1, 3, 10}, each for the
same number of epochs. Reported, in nats per test image:

* rate and distortion of both at the five β;
* the MR-VAE's distortion at the β-VAE's rate (its curve interpolated) minus the
  β-VAE's distortion: the target is <= 1 nat at every β (Bae et al. 2023, figure 4);
* the total compute (seconds and gradient steps) of each approach;
* the area between the two curves over the rates both cover (positive: MR-VAE worse).

Prints ``name: value`` lines and writes ``bench_out/mrvae.json``.
Usage: ``python bench/mrvae.py [--epochs 10] [--test-points 2000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, rate_distortion
from posterity.models import VAE

BETAS = (0.01, 0.1, 1.0, 3.0, 10.0)
BETA_RANGE = (0.01, 10.0)
Z_DIM, HIDDEN, BATCH = 50, (200, 200), 100


def load() -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from posterity.datasets import binarized_mnist

        train, _, test = binarized_mnist(download=False)
        return train, test, "binarized MNIST"
    except FileNotFoundError:
        from posterity.datasets import binarized_digits

        train, _, test = binarized_digits()
        print("binarized MNIST not found: using the embedded digits", file=sys.stderr)
        return train, test, "binarized digits"


def train(objective: str, train_data: torch.Tensor, epochs: int, beta: float = 1.0,
          warmup_fraction: float = 0.0):
    pyro.set_rng_seed(0)
    multi = objective == "multi_rate"
    kwargs = {"multi_rate": True, "beta_range": BETA_RANGE} if multi else {}
    x_dim = train_data.shape[1]
    model = VAE(x_dim, Z_DIM, HIDDEN, **kwargs)
    guide = GaussianEncoder(x_dim, Z_DIM, HIDDEN, **kwargs)
    steps = epochs * math.ceil(train_data.shape[0] / BATCH)
    extra = {"beta_warmup": int(warmup_fraction * steps)} if multi else {"beta": beta}
    vi = AmortizedVI(model, guide, objective=objective, lr=1e-3, **extra)
    start = time.perf_counter()
    vi.fit(train_data, epochs=epochs, batch_size=BATCH, progress=False, seed=0)
    seconds = time.perf_counter() - start
    return model, guide, seconds, len(vi.history.steps["loss"])


def area_between(rates_a, dist_a, rates_b, dist_b) -> tuple[float, float, float]:
    """∫ (D_a(R) - D_b(R)) dR over the rates both piecewise-linear curves cover."""
    order_a, order_b = np.argsort(rates_a), np.argsort(rates_b)
    ra, da = np.asarray(rates_a)[order_a], np.asarray(dist_a)[order_a]
    rb, db = np.asarray(rates_b)[order_b], np.asarray(dist_b)[order_b]
    low, high = max(ra[0], rb[0]), min(ra[-1], rb[-1])
    if high <= low:
        return float("nan"), low, high
    grid = np.linspace(low, high, 2001)
    gap = np.interp(grid, ra, da) - np.interp(grid, rb, db)
    return float(np.trapz(gap, grid)), float(low), float(high)


def compare(name, rows, mr_curve, mr_at, mr_seconds, mr_steps, bvae_seconds, bvae_steps):
    mr_rates, mr_dists = mr_curve.rate.numpy(), mr_curve.distortion.numpy()
    order = np.argsort(mr_rates)
    result = {"betas": []}
    for (beta, rate, distortion, _), mr_rate, mr_dist in zip(
        rows, mr_at.rate.tolist(), mr_at.distortion.tolist()
    ):
        covered = mr_rates.min() <= rate <= mr_rates.max()
        matched = float(np.interp(rate, mr_rates[order], mr_dists[order]))
        excess = matched - distortion
        result["betas"].append({
            "beta": beta, "beta_vae_rate": rate, "beta_vae_distortion": distortion,
            "mr_vae_rate": mr_rate, "mr_vae_distortion": mr_dist,
            "mr_distortion_at_matched_rate": matched, "excess_distortion": excess,
            "rate_covered_by_mr_curve": bool(covered),
        })
        flag = "" if covered else " (rate outside the MR-VAE curve: clamped)"
        print(f"{name}/beta_{beta:g}: beta-VAE R={rate:.2f} D={distortion:.2f} | MR-VAE "
              f"R={mr_rate:.2f} D={mr_dist:.2f} | excess distortion at matched rate: "
              f"{excess:+.2f}{flag}")
    area, low, high = area_between(mr_rates, mr_dists, [r[1] for r in rows],
                                   [r[2] for r in rows])
    result.update(
        seconds=mr_seconds, steps=mr_steps, area_between_curves=area,
        area_rate_interval=[low, high],
        curve={"beta": mr_curve.beta.tolist(), "rate": mr_rates.tolist(),
               "distortion": mr_dists.tolist()},
    )
    print(f"{name}/compute_ratio_seconds: {mr_seconds / bvae_seconds:.3f} "
          f"(MR-VAE {mr_seconds:.0f} s, five beta-VAEs {bvae_seconds:.0f} s)")
    print(f"{name}/compute_ratio_steps: {mr_steps / bvae_steps:.3f}")
    print(f"{name}/area_between_curves: {area:.2f} nat^2 over rates [{low:.1f}, {high:.1f}] "
          f"(positive: MR-VAE above the beta-VAEs)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-points", type=int, default=2000)
    parser.add_argument("--curve-points", type=int, default=40)
    parser.add_argument("--out", default="bench_out/mrvae.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_data, test, data_name = load()
    test = test[: args.test_points]

    rows, bvae_seconds, bvae_steps = [], 0.0, 0
    for beta in BETAS:
        m, g, seconds, steps = train("beta", train_data, args.epochs, beta)
        bvae_seconds += seconds
        bvae_steps += steps
        pyro.set_rng_seed(1)
        point = rate_distortion(m, g, test, num_samples=8)
        rows.append((beta, float(point.rate), float(point.distortion), seconds))
    print(f"# {data_name}, {args.epochs} epochs each, {len(test)} test images, nats per image")
    results = {"data": data_name, "epochs": args.epochs, "test_points": len(test),
               "beta_vae_seconds": bvae_seconds, "beta_vae_steps": bvae_steps,
               "beta_vae": [dict(zip(("beta", "rate", "distortion", "seconds"), r))
                            for r in rows]}
    dense = torch.logspace(math.log10(BETA_RANGE[0]), math.log10(BETA_RANGE[1]),
                           args.curve_points)
    for name, warmup in (("mr_vae", 0.0), ("mr_vae_warmup", 1 / 3)):
        model, guide, mr_seconds, mr_steps = train("multi_rate", train_data, args.epochs,
                                                   warmup_fraction=warmup)
        pyro.set_rng_seed(1)
        mr_curve = rate_distortion(model, guide, test, dense, num_samples=8)
        mr_at = rate_distortion(model, guide, test, torch.tensor(BETAS), num_samples=8)
        results[name] = compare(name, rows, mr_curve, mr_at, mr_seconds, mr_steps,
                                bvae_seconds, bvae_steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
