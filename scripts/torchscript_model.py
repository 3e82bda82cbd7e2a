"""Writes the committed TorchScript modules the end-to-end tests and the example train: a
consortium's own model, as a consortium would bring it (`torch.jit.script` output), with the
safetensors file of its initial parameters that the coordinator reads (names, shapes and
values in `named_parameters()` order; the coordinator never runs the module).

    python scripts/torchscript_model.py tests/fixtures/torchscript

writes, for the tests' six encoded features:
- risk_model.pt / risk_model.safetensors: a gated risk model, logit = out(tanh(a(x)) * sigmoid(g(x)));
- risk_model_v2.pt: the same parameters with another forward pass (a module a hospital did not
  approve: its SHA-256 differs, so a node refuses it whatever its parameters);
- fails_on_large_values.pt: v1's function, raising on any row with a value above 3 (the node's
  tests: a module failing on some patients only changes neither whether a DP release happens
  nor whether an evaluation completes).

Needs torch (the PyPI wheel `scripts/setup` downloads). medfed itself never runs Python.
"""

import json
import os
import struct
import sys

import torch


class GatedRisk(torch.nn.Module):
    """A gated unit: tanh features, each scaled by a sigmoid gate read from the same input."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.a = torch.nn.Linear(features, hidden)
        self.g = torch.nn.Linear(features, hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)) * torch.sigmoid(self.g(x))
        return self.out(h).squeeze(-1)


class GatedRiskV2(GatedRisk):
    """The same parameters, another function: ReLU where v1 has tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x)) * torch.sigmoid(self.g(x))
        return self.out(h).squeeze(-1)


class FailsOnLargeValues(GatedRisk):
    """v1's function, except that it raises on any row holding a value above 3: a module
    whose code fails on some patients only (the node must neither fail nor decline for it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 3.0).any()):
            raise ValueError("a value above 3")
        h = torch.tanh(self.a(x)) * torch.sigmoid(self.g(x))
        return self.out(h).squeeze(-1)


def write_safetensors(module: torch.nn.Module, path: str) -> None:
    """The safetensors format by hand (8-byte header length, JSON header, raw little-endian
    data), tensors in `named_parameters()` order, so no extra package is needed."""
    header = {}
    blobs = []
    offset = 0
    for name, p in module.named_parameters():
        data = p.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(p.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/torchscript"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(20261205)
    model = GatedRisk(features=6, hidden=8)
    torch.jit.script(model).save(os.path.join(out, "risk_model.pt"))
    write_safetensors(model, os.path.join(out, "risk_model.safetensors"))
    other = GatedRiskV2(features=6, hidden=8)
    other.load_state_dict(model.state_dict())
    torch.jit.script(other).save(os.path.join(out, "risk_model_v2.pt"))
    failing = FailsOnLargeValues(features=6, hidden=8)
    failing.load_state_dict(model.state_dict())
    torch.jit.script(failing).save(os.path.join(out, "fails_on_large_values.pt"))
    # A check that the saved module computes what the Python one does.
    x = torch.randn(5, 6)
    loaded = torch.jit.load(os.path.join(out, "risk_model.pt"))
    assert torch.allclose(loaded(x), model(x))
    print(f"wrote {out}/risk_model.pt, risk_model.safetensors, risk_model_v2.pt, fails_on_large_values.pt")


if __name__ == "__main__":
    main()
