"""Flower ClientApp: one hospital (or shard). Secure aggregation through Flower's secaggplus_mod."""

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context

from medfedbench.task import evaluate_counts, get_weights, hidden_of, load_node, make_net, set_weights, train


class HospitalClient(NumPyClient):
    def __init__(self, node, run_config):
        self.node = node
        self.rc = run_config
        self.x, self.y, self.xt, self.yt = load_node(run_config["data-dir"], node)
        self.net = make_net(self.x.shape[1], hidden_of(run_config["hidden"]))

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        # medfed's node evaluates the round's model on its held-out rows before training, in the
        # same round; do the same work here (the counts go back as plain metrics).
        _, _, loss, correct = evaluate_counts(self.net, self.xt, self.yt)
        rnd = int(config.get("server_round", 0))
        seed = int(self.rc["seed"]) * 1_000_003 + rnd * 1009 + self.node
        train(self.net, self.x, self.y, int(self.rc["local-epochs"]), float(self.rc["learning-rate"]),
              int(self.rc["batch-size"]), seed)
        return get_weights(self.net), len(self.y), {"eval_loss": loss, "eval_correct": correct,
                                                    "eval_n": float(len(self.yt))}


def client_fn(context: Context):
    return HospitalClient(int(context.node_config["partition-id"]), context.run_config).to_client()


def maybe_secagg(msg, ctxt, call_next):
    """Flower's SecAgg+ mod when the run asks for secure aggregation, else nothing."""
    if ctxt.run_config.get("secagg"):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=client_fn, mods=[maybe_secagg])
