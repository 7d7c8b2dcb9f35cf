"""Step time of DP-SGD (Opacus) against plain SGD for the same model and batch.

Both steps train the model the DP run trains (BatchNorm replaced by GroupNorm), so the
ratio measures what privacy costs: per-sample gradients, clipping and noise.

    python benchmarks/dp_step_time.py [--model cnn] [--batch 64] [--size 28] [--steps 30] [--threads 1]

A simulated site trains with ``simulation.threads_per_site`` torch threads (1 by
default), so ``--threads 1`` measures the step as the DP configs run it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from medfed.client.privacy import make_private_model
from medfed.models import build_model


def time_steps(model, optimizer, loader, steps: int) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    times, it = [], iter(loader)
    for i in range(steps + 5):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if i >= 5:  # warm-up steps are not counted
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mode", default="hooks", help="Opacus grad_sample_mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch * 20
    data = TensorDataset(torch.rand(n, 1, args.size, args.size), torch.randint(0, 2, (n,)))

    plain = make_private_model(build_model(args.model, 1, 2, args.size))
    plain_time = time_steps(plain, torch.optim.Adam(plain.parameters(), 1e-3),
                            DataLoader(data, batch_size=args.batch, shuffle=True), args.steps)

    private = make_private_model(build_model(args.model, 1, 2, args.size))
    model, optimizer, loader = PrivacyEngine().make_private(
        module=private, optimizer=torch.optim.Adam(private.parameters(), 1e-3),
        data_loader=DataLoader(data, batch_size=args.batch), noise_multiplier=1.0,
        max_grad_norm=1.0, grad_sample_mode=args.mode,
    )
    dp_time = time_steps(model, optimizer, loader, args.steps)
    print(f"model {args.model}, batch {args.batch}, {args.size}px, {torch.get_num_threads()} threads, "
          f"Opacus grad_sample_mode={args.mode}")
    print(f"non-DP step: {plain_time * 1000:.1f} ms   DP-SGD step: {dp_time * 1000:.1f} ms   "
          f"ratio: {dp_time / plain_time:.2f}")


if __name__ == "__main__":
    main()
