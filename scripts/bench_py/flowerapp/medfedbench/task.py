"""The model, data and local training, written to match medfed's node exactly.

medfed's node (node/src/trainer/tch_trainer.rs): `nn.Sequential` of Linear layers with a ReLU
after each hidden one and one logit out; initial weights and biases uniform in ±1/√fan_in (what
`nn.Linear` draws); plain mini-batch SGD (no momentum, no weight decay) on the mean
binary-cross-entropy-with-logits; the training rows shuffled every epoch; the last, partial batch
kept. Evaluation: 1000-bin per-label score histograms and the AUC from them
(protocol/src/evaluation.rs).
"""

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)

SCORE_BINS = 1000


def hidden_of(text):
    return [int(h) for h in str(text).split(",") if h.strip()]


def make_net(input_dim, hidden):
    layers, width = [], input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def get_weights(net):
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


def set_weights(net, weights):
    keys = list(net.state_dict().keys())
    net.load_state_dict({k: torch.from_numpy(np.array(w, dtype=np.float32)) for k, w in zip(keys, weights)})


def load_node(data_dir, node):
    d = np.load(f"{data_dir}/node-{node}.npz")
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def train(net, x, y, epochs, lr, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]).squeeze(1), y[idx])
            loss.backward()
            opt.step()


def evaluate_counts(net, x, y):
    """Per-label score histograms and the summed loss, as medfed's node sends them."""
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="sum")
        scores = torch.sigmoid(logits).numpy().astype(np.float64)
    bins = np.minimum((scores * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    pos = np.bincount(bins[y == 1], minlength=SCORE_BINS).astype(np.float64)
    neg = np.bincount(bins[y == 0], minlength=SCORE_BINS).astype(np.float64)
    correct = float(((scores >= 0.5) == (y == 1)).sum())
    return pos, neg, float(loss), correct


def histogram_auc(pos, neg):
    """protocol/src/evaluation.rs `histogram_auc`: ties within a bin count ½."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below, concordant = 0.0, 0.0
    for p, n in zip(pos, neg):
        concordant += p * (below + 0.5 * n)
        below += n
    return concordant / (total_pos * total_neg)
