"""DP-SGD samples per second with Opacus, on the workload of node/benches/dp_sgd.rs: the MLP
18-32-16-1, N = 4096 examples, Poisson sampling with q = 256/4096 (expected batch 256), 16 steps
an epoch, noise multiplier 1, max_grad_norm 1, SGD lr 0.05, one torch thread. Also plain SGD in
PyTorch (shuffled batches of 256) for reference. Prints one `opacus …` line.
"""

import time
import warnings

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from opacus import PrivacyEngine  # noqa: E402

ROWS, BATCH, WIDTH, EPOCHS = 4096, 256, 18, 12

rng = np.random.default_rng(3)
x = rng.uniform(-1, 1, (ROWS, WIDTH)).astype(np.float32)
y = ((x * np.where(np.arange(WIDTH) % 2 == 0, 1, -1)).sum(1) > 0).astype(np.float32)
dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def mlp():
    return nn.Sequential(nn.Linear(WIDTH, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))


def epoch(model, optimizer, loader):
    loss_fn = nn.BCEWithLogitsLoss()
    steps = samples = 0
    start = time.perf_counter()
    for xb, yb in loader:
        optimizer.zero_grad()
        loss_fn(model(xb).squeeze(1), yb).backward()
        optimizer.step()
        steps += 1
        samples += len(yb)
    return time.perf_counter() - start, steps, samples


model = mlp()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
engine = PrivacyEngine(accountant="rdp")
dp_model, dp_optimizer, dp_loader = engine.make_private(
    module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
    poisson_sampling=True)

plain = mlp()
plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05)
plain_loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)

dp_rates, sgd_rates, dp_steps = [], [], []
epoch(dp_model, dp_optimizer, dp_loader)
epoch(plain, plain_opt, plain_loader)
for _ in range(EPOCHS):
    t, steps, n = epoch(dp_model, dp_optimizer, dp_loader)
    dp_rates.append(n / t)
    dp_steps.append(t / steps)
    t, steps, n = epoch(plain, plain_opt, plain_loader)
    sgd_rates.append(n / t)
print(f"opacus {torch.__version__} MLP 18-32-16-1 batch {BATCH} of N = {ROWS}, {torch.get_num_threads()} "
      f"torch thread(s), median of {EPOCHS} interleaved epochs: dp_sgd {np.median(dp_rates):.0f} samples/s "
      f"({np.median(dp_steps) * 1e3:.3f} ms/step); plain sgd {np.median(sgd_rates):.0f} samples/s")
