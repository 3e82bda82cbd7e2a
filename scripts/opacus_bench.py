#!/usr/bin/env python3
"""Times Opacus DP-SGD, and a plain PyTorch SGD step, on the CNN of node/benches/cnn_dp_sgd.rs.

Same CNN (conv 1->16 k5, GroupNorm(4, 16), ReLU, max-pool 2, conv 16->32 k5, ReLU, max-pool 2,
flatten, linear 512->1; no batch norm), same data size (N = 1024 standard normal 1x28x28
images), same sampling (Poisson, q = 64/1024, so 16 steps an epoch of expected batch 64), same
sigma = 1 and C = 1, and the same step: Opacus undoes the mean-reduced BCE-with-logits loss per
sample, clips, sums, adds noise and divides by the expected batch size q*N, as medfed does; on
the CPU with the same number of torch threads.

Run (torch and opacus in a throwaway venv; see BENCHMARKS.md for how it was installed):

    OMP_WAIT_POLICY=PASSIVE .deps/opacus-venv/bin/python scripts/opacus_bench.py --threads 2

(OMP_WAIT_POLICY=PASSIVE on a machine shared with other work, for this and the Rust benchmark
alike: libgomp's spinning waits otherwise dominate both.)

Prints, like the Rust benchmark, the median step time over interleaved epochs and samples/s
(the expected batch, 64, over the step time), then the fastest epoch of each kind.
"""

import argparse
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROWS = 1024
BATCH = 64
STEPS = ROWS // BATCH


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 1),
    )


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, 1, 28, 28, generator=g)
    top = x[:, :, :14, :].sum(dim=(1, 2, 3))
    bottom = x[:, :, 14:, :].sum(dim=(1, 2, 3))
    y = (top > bottom).float().unsqueeze(1)
    return TensorDataset(x, y)


def epoch(model, optimizer, loader, loss_fn) -> int:
    """One pass over `loader`; returns the steps taken."""
    steps = 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        if len(x) > 0:
            loss = loss_fn(model(x), y)
            loss.backward()
        optimizer.step()
        steps += 1
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=20, help="interleaved epochs timed")
    parser.add_argument(
        "--grad-sample-mode", default="hooks", help="Opacus's per-sample gradient mode"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from opacus import PrivacyEngine  # noqa: E402 (after the thread setting)
    import opacus

    dataset = data()

    plain_model = cnn()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.05)
    plain_loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    plain_loss = nn.BCEWithLogitsLoss(reduction="mean")

    dp_model = cnn()
    dp_opt = torch.optim.SGD(dp_model.parameters(), lr=0.05)
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=dp_model,
        optimizer=dp_opt,
        data_loader=DataLoader(dataset, batch_size=BATCH),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
        grad_sample_mode=args.grad_sample_mode,
    )
    # With reduction="mean" (the optimiser's default loss_reduction), Opacus rescales each
    # per-sample gradient by the batch size and divides the noisy sum by q*N.
    dp_loss = nn.BCEWithLogitsLoss(reduction="mean")

    # Warm-up.
    epoch(plain_model, plain_opt, plain_loader, plain_loss)
    epoch(dp_model, dp_opt, dp_loader, dp_loss)

    dp_times, plain_times, ratios = [], [], []
    for _ in range(args.pairs):
        start = time.perf_counter()
        dp_steps = epoch(dp_model, dp_opt, dp_loader, dp_loss)
        d = (time.perf_counter() - start) / dp_steps
        start = time.perf_counter()
        plain_steps = epoch(plain_model, plain_opt, plain_loader, plain_loss)
        s = (time.perf_counter() - start) / plain_steps
        dp_times.append(d)
        plain_times.append(s)
        ratios.append(d / s)
    d, s = statistics.median(dp_times), statistics.median(plain_times)
    # The fastest epoch of each kind: the least disturbed by other processes on a shared machine.
    d_min, s_min = min(dp_times), min(plain_times)
    print(
        f"Opacus {opacus.__version__} (grad_sample_mode={args.grad_sample_mode}), torch "
        f"{torch.__version__}, CNN 1x28x28 "
        f"({sum(p.numel() for p in plain_model.parameters()):,} params), batch {BATCH} of "
        f"N = {ROWS}, sigma 1, C 1, {torch.get_num_threads()} torch threads, "
        f"{args.pairs} interleaved epochs:"
    )
    print(
        f"  median: plain torch step {s * 1e3:.2f} ms = {BATCH / s:.0f} samples/s; opacus dp step "
        f"{d * 1e3:.2f} ms = {BATCH / d:.0f} samples/s; dp/plain time ratio "
        f"{statistics.median(ratios):.2f}"
    )
    print(
        f"  fastest: plain torch step {s_min * 1e3:.2f} ms = {BATCH / s_min:.0f} samples/s; "
        f"opacus dp step {d_min * 1e3:.2f} ms = {BATCH / d_min:.0f} samples/s; ratio "
        f"{d_min / s_min:.2f}"
    )


if __name__ == "__main__":
    main()
