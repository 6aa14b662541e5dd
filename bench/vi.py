"""Amortized VI benchmark: speed against its peers, and test log-likelihood.

Speed (one process, one thread, binarized MNIST, 784-200-200-50 tanh, batch 100): one
epoch of the ELBO three ways, interleaved over several rounds on the same data:
posterity ``AmortizedVI``, a hand-written PyTorch loop computing the same Monte Carlo
ELBO, and plain Pyro ``SVI(Trace_ELBO)`` written as in Pyro's VAE tutorial. Then IWAE
with k = 50 against the hand-written loop. Quality: the test log-likelihood (S = 5000)
of an IWAE(k=5) after a fixed CPU budget, against Burda et al. (2016, appendix C).

Prints ``name: ratio`` lines with the absolute times beside them and writes
``bench_out/vi.json``. Usage: ``python bench/vi.py [--quality-seconds 600] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, log_likelihood
from posterity.models import VAE

X_DIM, Z_DIM, HIDDEN, BATCH = 784, 50, (200, 200), 100
BURDA_IWAE = {1: -88.71, 5: -87.63, 50: -87.10}  # Burda et al. 2016, appendix C, 2-layer-free
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def load_train_test(quick: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from posterity.datasets import binarized_mnist

        train, _, test = binarized_mnist(download=False)
        return train, test, "binarized MNIST"
    except FileNotFoundError:
        generator = torch.Generator().manual_seed(0)
        data = torch.bernoulli(torch.full((60000, X_DIM), 0.13), generator=generator)
        print("binarized MNIST not found: timing on random binary data", file=sys.stderr)
        return data[:50000], data[50000:], "random binary (MNIST absent)"


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def hand_written(num_particles: int):
    """A plain PyTorch VAE loop: the same estimator, written by hand."""
    torch.manual_seed(0)
    encoder = mlp([X_DIM, *HIDDEN, 2 * Z_DIM])
    decoder = mlp([Z_DIM, *reversed(HIDDEN), X_DIM])
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)

    def step(x: torch.Tensor) -> float:
        loc, raw = encoder(x).chunk(2, -1)
        scale = F.softplus(raw) + 1e-5
        noise = torch.randn(num_particles, *loc.shape)
        z = loc + scale * noise
        logits = decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        log_prior = -0.5 * z.pow(2).sum(-1) - HALF_LOG_2PI * Z_DIM
        log_q = -0.5 * noise.pow(2).sum(-1) - scale.log().sum(-1) - HALF_LOG_2PI * Z_DIM
        log_w = log_lik + log_prior - log_q
        objective = torch.logsumexp(log_w, 0) - math.log(num_particles)
        loss = -objective.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def posterity(num_particles: int):
    torch.manual_seed(0)
    vi = AmortizedVI(
        VAE(X_DIM, Z_DIM, HIDDEN), GaussianEncoder(X_DIM, Z_DIM, HIDDEN),
        objective="iwae" if num_particles > 1 else "elbo", num_particles=num_particles,
        lr=1e-3,
    )
    vi.prepare(torch.zeros(2, X_DIM))
    return vi.step


def pyro_svi(num_particles: int):
    """Plain Pyro, as in its VAE tutorial: pyro.module + SVI(Trace_ELBO)."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    encoder = mlp([X_DIM, *HIDDEN, 2 * Z_DIM])
    decoder = mlp([Z_DIM, *reversed(HIDDEN), X_DIM])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-5).to_event(1))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    return lambda x: svi.step(x) / x.shape[0]


def time_steps(make, num_particles: int, data: torch.Tensor, steps: int) -> float:
    step = make(num_particles)
    for i in range(3):  # warm-up
        step(data[i * BATCH : (i + 1) * BATCH])
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for i in range(steps):
        step(data[order[i * BATCH : (i + 1) * BATCH]])
    return time.perf_counter() - start


def compare(contenders: dict, num_particles: int, data, steps: int, rounds: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, make in contenders.items():
            times[name].append(time_steps(make, num_particles, data, steps))
    return {name: statistics.median(t) for name, t in times.items()} | {
        f"{name}_min": min(t) for name, t in times.items()
    }


def quality(train, test, seconds: float, eval_points: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    pyro.set_rng_seed(0)
    model = VAE(X_DIM, Z_DIM, HIDDEN)
    guide = GaussianEncoder(X_DIM, Z_DIM, HIDDEN)
    vi = AmortizedVI(model, guide, objective="iwae", num_particles=5, lr=1e-3)
    start, epochs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        vi.fit(train, epochs=epochs + 1, batch_size=BATCH, progress=False)
        epochs += 1
    trained = time.perf_counter() - start
    pyro.set_rng_seed(1)
    ll, stderr = log_likelihood(
        model, guide, test[:eval_points], 5000, return_stderr=True, progress=False
    )
    return {
        "train_seconds": trained, "epochs": epochs, "threads": threads,
        "test_points": eval_points, "test_log_likelihood": ll.mean().item(),
        "monte_carlo_stderr": (stderr.pow(2).sum().sqrt() / eval_points).item(),
        "reference_iwae_k5": BURDA_IWAE[5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of an epoch per timing")
    parser.add_argument("--quality-seconds", type=float, default=600.0)
    parser.add_argument("--quality-threads", type=int, default=2)
    parser.add_argument("--eval-points", type=int, default=1000)
    parser.add_argument("--out", default="bench_out/vi.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    train, test, data_name = load_train_test(args.quick)
    epoch_steps = train.shape[0] // BATCH
    steps = epoch_steps // 10 if args.quick else epoch_steps
    results: dict = {"data": data_name, "steps_timed": steps, "epoch_steps": epoch_steps}

    contenders = {"posterity": posterity, "torch": hand_written, "pyro": pyro_svi}
    elbo = compare(contenders, 1, train, steps, args.rounds)
    scale = epoch_steps / steps
    results["elbo_epoch_seconds"] = {k: v * scale for k, v in elbo.items()}
    print(f"# one thread, {data_name}, 784-200-200-50 tanh, batch {BATCH}, median of "
          f"{args.rounds} interleaved rounds, seconds per epoch")
    e = results["elbo_epoch_seconds"]
    print(f"vi/elbo_epoch posterity_vs_torch: {elbo['posterity'] / elbo['torch']:.3f} "
          f"(posterity {e['posterity']:.2f} s, torch {e['torch']:.2f} s)")
    print(f"vi/elbo_epoch posterity_vs_pyro_svi: {elbo['posterity'] / elbo['pyro']:.3f} "
          f"(posterity {e['posterity']:.2f} s, pyro {e['pyro']:.2f} s)")

    iwae_steps = max(steps // 10, 5)
    iwae = compare({"posterity": posterity, "torch": hand_written}, 50, train, iwae_steps,
                   args.rounds)
    results["iwae50_epoch_seconds"] = {k: v * epoch_steps / iwae_steps for k, v in iwae.items()}
    i = results["iwae50_epoch_seconds"]
    print(f"vi/iwae50_epoch posterity_vs_torch: {iwae['posterity'] / iwae['torch']:.3f} "
          f"(posterity {i['posterity']:.1f} s, torch {i['torch']:.1f} s, from {iwae_steps} "
          f"steps)")

    if args.quality_seconds > 0:
        q = quality(train, test, args.quality_seconds, args.eval_points, args.quality_threads)
        results["quality"] = q
        print(f"vi/iwae5_test_ll_after_{q['train_seconds']:.0f}s: "
              f"{q['test_log_likelihood']:.2f} nats ± {q['monte_carlo_stderr']:.2f} "
              f"(S=5000, first {q['test_points']} test points, {q['epochs']} epochs, "
              f"{q['threads']} threads; Burda et al. k=5: {BURDA_IWAE[5]})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
