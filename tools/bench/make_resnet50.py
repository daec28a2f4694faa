#!/usr/bin/env python3
"""Export torchvision's ResNet-50 to ONNX for the gradient-build benchmark.

Pinned: torch==2.15.0, torchvision==0.29.2 (the newest torchvision on PyPI; it
requires torch>=2.14 and runs on 2.15), onnx==1.23.2. All are in .venv-tools
(`tools/setup --torch`, then `.venv-tools/bin/pip install torchvision==0.29.2`).

    .venv-tools/bin/python tools/bench/make_resnet50.py [OUT]   (default target/bench/resnet50.onnx)

The model: random init (weights=None, seed 0, nothing downloaded), train() mode,
TorchScript exporter (dynamo=False), training=TrainingMode.TRAINING,
do_constant_folding=False, opset 18, input "x" [N,3,224,224] with a dynamic batch,
output "logits" [N,1000], ir_version 10 (ORT 1.31 refuses onnx 1.23's default IR 14).
It is about 100 MB; it goes to a git-ignored folder and is never committed.
"""

import sys
import warnings
from pathlib import Path

import onnx
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
IR_VERSION = 10
OPSET = 18


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "bench" / "resnet50.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).train()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    m = onnx.load(str(out))
    m.ir_version = IR_VERSION
    onnx.save(m, str(out))
    onnx.checker.check_model(str(out))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}: {out.stat().st_size / 1e6:.1f} MB, {len(m.graph.node)} nodes, "
        f"{len(m.graph.initializer)} initializers, {n_params} parameters "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__})"
    )


if __name__ == "__main__":
    main()
