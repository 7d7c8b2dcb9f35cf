"""Step time of DP-SGD (Opacus) against plain SGD for the same model and batch.

Both steps train the model the DP run trains (BatchNorm replaced by GroupNorm), so the
ratio measures what privacy costs: per-sample gradients, clipping and noise.

    python benchmarks/dp_step_time.py [--model cnn] [--batch 64] [--size 28] [--steps 40] [--threads 1]
                                      [--conv-sampler medfed|opacus] [--default-allocator]

Convolutions take medfed's per-sample gradients (client/conv_grad_sampler.py) unless
``--conv-sampler opacus`` puts Opacus' own back, to compare the two. Like a site's DP
round, the process keeps freed memory (client/allocator.py) unless ``--default-allocator``.

A simulated site trains with ``simulation.threads_per_site`` torch threads (1 by
default), so ``--threads 1`` measures the step as the DP configs run it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch.utils.data import DataLoader, TensorDataset

from medfed.client.allocator import keep_freed_memory
from medfed.models.classification.network import build_classifier
from medfed.models.private_layers import make_private_model


class Stepper:
    """Trains ``model`` one batch at a time, cycling through ``loader``."""

    def __init__(self, model, optimizer, loader) -> None:
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.batches = iter(loader)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def timed_step(self) -> float:
        try:
            x, y = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x, y = next(self.batches)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(self.model(x), y).backward()
        self.optimizer.step()
        return time.perf_counter() - started


def interleaved_medians(plain: Stepper, private: Stepper, steps: int, block: int = 5):
    """Median step times, measured in alternating blocks so that a machine slowing down
    or speeding up during the benchmark weighs on both alike."""
    for _ in range(3):  # warm-up, not counted
        plain.timed_step(), private.timed_step()
    plain_times, private_times = [], []
    while len(plain_times) < steps:
        plain_times += [plain.timed_step() for _ in range(block)]
        private_times += [private.timed_step() for _ in range(block)]
    return statistics.median(plain_times), statistics.median(private_times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--mode", default="hooks", help="Opacus grad_sample_mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--conv-sampler", choices=("medfed", "opacus"), default="medfed")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc returning freed memory to the kernel (sites keep it under DP)")
    args = parser.parse_args()
    if not args.default_allocator:
        keep_freed_memory()  # as a site's DP-SGD round does
    if args.conv_sampler == "opacus":
        for conv in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d):
            GradSampleModule.GRAD_SAMPLERS[conv] = compute_conv_grad_sample
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch * 20
    data = TensorDataset(torch.rand(n, 1, args.size, args.size), torch.randint(0, 2, (n,)))

    plain = make_private_model(build_classifier(args.model, 1, 2, args.size))
    plain_stepper = Stepper(plain, torch.optim.Adam(plain.parameters(), 1e-3),
                            DataLoader(data, batch_size=args.batch, shuffle=True))

    private = make_private_model(build_classifier(args.model, 1, 2, args.size))
    model, optimizer, loader = PrivacyEngine().make_private(
        module=private, optimizer=torch.optim.Adam(private.parameters(), 1e-3),
        data_loader=DataLoader(data, batch_size=args.batch), noise_multiplier=1.0,
        max_grad_norm=1.0, grad_sample_mode=args.mode,
    )
    plain_time, dp_time = interleaved_medians(plain_stepper, Stepper(model, optimizer, loader), args.steps)
    print(f"model {args.model}, batch {args.batch}, {args.size}px, {torch.get_num_threads()} threads, "
          f"Opacus grad_sample_mode={args.mode}, {args.conv_sampler} conv per-sample gradients, "
          f"{'default' if args.default_allocator else 'freed memory kept'} allocator")
    print(f"non-DP step: {plain_time * 1000:.1f} ms   DP-SGD step: {dp_time * 1000:.1f} ms   "
          f"ratio: {dp_time / plain_time:.2f}")


if __name__ == "__main__":
    main()
