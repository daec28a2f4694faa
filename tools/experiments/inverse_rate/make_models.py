#!/usr/bin/env python3
"""Small models for the inverse-rate experiment (tools/experiments/inverse_rate/run).

Six architectures x two datasets x three seeds, exported from PyTorch in
training mode the way tools/export_models.py does it (TorchScript exporter,
opset 18, training=TrainingMode.TRAINING, do_constant_folding=False, IR 10,
BatchNorm running stats reset to their pre-trace values). Input "x" is
[batch, 64] for digits (8x8 images) and [batch, 40] for MNIST-1D; output
"logits" [batch, 10]. Every seed is its own initialization, so the three
seeds of a configuration differ in both the initial weights and the data order.

  mlp_1x64    MLP, one hidden layer of 64         (small)
  mlp_1x512   MLP, one hidden layer of 512        (wide)
  mlp_2x128   MLP, two hidden layers of 128
  mlp_4x64    MLP, four hidden layers of 64       (deep, narrow)
  cnn         Conv(16)-ReLU-MaxPool-Conv(32)-ReLU-MaxPool-Linear
  cnn_bn      Conv(16)-BN-ReLU-MaxPool-Conv(32)-BN-ReLU-MaxPool-Linear

The convolutions are 2-D on the 8x8 digits and 1-D on the 40-sample
MNIST-1D signals.

Run from the repository root (deterministic; rewrites byte-identical files):

    .venv-tools/bin/python tools/experiments/inverse_rate/make_models.py
"""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
OUT = HERE / "models"
DATASETS = {"digits": 64, "mnist1d": 40}
SEEDS = (0, 1, 2)
CLASSES = 10


class MLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        layers, w = [], d
        for h in hidden:
            layers += [nn.Linear(w, h), nn.ReLU()]
            w = h
        layers.append(nn.Linear(w, CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self, d, channels, bn):
        super().__init__()
        self.two_d = d == 64
        conv = nn.Conv2d if self.two_d else nn.Conv1d
        norm = nn.BatchNorm2d if self.two_d else nn.BatchNorm1d
        pool = nn.MaxPool2d if self.two_d else nn.MaxPool1d
        layers, cin = [], 1
        for c in channels:
            layers.append(conv(cin, c, 3, padding=1, bias=not bn))
            if bn:
                layers.append(norm(c))
            layers += [nn.ReLU(), pool(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        side = (8 // 2 ** len(channels)) ** 2 if self.two_d else 40 // 2 ** len(channels)
        self.fc = nn.Linear(cin * side, CLASSES)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8) if self.two_d else x.view(-1, 1, 40)
        return self.fc(torch.flatten(self.features(x), 1))


ARCHS = {
    "mlp_1x64": lambda d: MLP(d, [64]),
    "mlp_1x512": lambda d: MLP(d, [512]),
    "mlp_2x128": lambda d: MLP(d, [128, 128]),
    "mlp_4x64": lambda d: MLP(d, [64] * 4),
    "cnn": lambda d: CNN(d, [16, 32], bn=False),
    "cnn_bn": lambda d: CNN(d, [16, 32], bn=True),
}


def export(module, d, path):
    buffers = {k: v.detach().clone() for k, v in module.named_buffers() if v.is_floating_point()}
    x = torch.rand(4, d, generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            opset_version=18,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load(str(path))
    # The tracer's train-mode forward moved the BN running stats: put them back.
    for t in model.graph.initializer:
        if t.name in buffers:
            t.CopyFrom(onnx.numpy_helper.from_array(buffers[t.name].numpy(), t.name))
    with torch.no_grad():
        for k, v in module.named_buffers():
            if k in buffers:
                v.copy_(buffers[k])
    model.ir_version = 10
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    # ORT and torch (train mode: BN on batch statistics) agree.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(9, d, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = module(x).numpy()
    with torch.no_grad():
        for k, v in module.named_buffers():
            if k in buffers:
                v.copy_(buffers[k])
    (got,) = sess.run(["logits"], {"x": x.numpy()})
    err = float(np.abs(got - want).max())
    assert err < 1e-4, f"{path.name}: ORT and torch differ by {err}"


def main():
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(exist_ok=True)
    manifest = {}
    for ds, d in DATASETS.items():
        for arch, make in ARCHS.items():
            for seed in SEEDS:
                torch.manual_seed(1000 * seed + sorted(ARCHS).index(arch))
                module = make(d).train()
                path = OUT / f"{ds}_{arch}_s{seed}.onnx"
                export(module, d, path)
                manifest[path.stem] = {
                    "file": path.name,
                    "dataset": ds,
                    "arch": arch,
                    "seed": seed,
                    "input": [None, d],
                    "trainable_parameters": sum(p.numel() for p in module.parameters()),
                    "bytes": path.stat().st_size,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
                print(f"{path.name}: {manifest[path.stem]['trainable_parameters']} parameters, "
                      f"{manifest[path.stem]['bytes']} bytes")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
