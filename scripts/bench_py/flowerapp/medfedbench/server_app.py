"""Flower ServerApp: FedAvg over every node each round, plain or with SecAgg+ (SecAggPlusWorkflow).

Writes `out` (JSON): the wall-clock time at the start of every round (configure_fit) and at its
end (after aggregate_fit), and the final model's pooled held-out AUC, accuracy and loss computed
from every node's held-out split with medfed's 1000-bin histogram AUC.
"""

import json
import time

import numpy as np
import torch
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from medfedbench.task import evaluate_counts, hidden_of, histogram_auc, load_node, make_net, set_weights


def load_safetensors(path):
    """{name: array} from a safetensors file (8-byte header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": np.float32, "F64": np.float64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


class TimedFedAvg(FedAvg):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.starts, self.ends, self.final = {}, {}, None

    def configure_fit(self, server_round, parameters, client_manager):
        self.starts.setdefault(server_round, time.time())
        out = super().configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in out:
            fit_ins.config["server_round"] = server_round
        return out

    def aggregate_fit(self, server_round, results, failures):
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None:
            self.final = parameters_to_ndarrays(params)
        self.ends[server_round] = time.time()
        return params, metrics


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    torch.manual_seed(int(rc["seed"]))
    nodes = int(rc["num-nodes"])
    x0 = load_node(rc["data-dir"], 0)[0]
    net = make_net(x0.shape[1], hidden_of(rc["hidden"]))
    if rc["init"]:
        # medfed's initial model (its round-0 checkpoint), so that both start from the same weights.
        set_weights(net, [load_safetensors(rc["init"])[k] for k in net.state_dict().keys()])
    initial = [v.detach().numpy().copy() for v in net.state_dict().values()]
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=nodes,
        min_available_clients=nodes,
        initial_parameters=ndarrays_to_parameters(initial),
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(rc["num-rounds"])),
                           strategy=strategy)
    fit_workflow = None
    if rc["secagg"]:
        fit_workflow = SecAggPlusWorkflow(num_shares=int(rc["num-shares"]),
                                          reconstruction_threshold=int(rc["threshold"]))
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    done = time.time()

    # Final model on the pooled held-out rows of every node (outside the timed rounds).
    set_weights(net, strategy.final)
    pos = neg = 0.0
    loss = correct = n = 0.0
    for node in range(nodes):
        _, _, xt, yt = load_node(rc["data-dir"], node)
        p, q, l, c = evaluate_counts(net, xt, yt)
        pos, neg, loss, correct, n = pos + p, neg + q, loss + l, correct + c, n + len(yt)
    with open(rc["out"], "w") as f:
        json.dump({"starts": strategy.starts, "ends": strategy.ends, "done": done,
                   "auc": histogram_auc(pos, neg), "accuracy": correct / n, "loss": loss / n,
                   "examples": n, "same_init": bool(rc["init"]), "params": int(sum(a.size for a in initial))}, f)
