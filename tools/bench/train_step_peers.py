#!/usr/bin/env python3
"""The peers of tools/bench/train_step: one training run of PyTorch eager or of ONNX
Runtime's on-device training, timed per epoch exactly as `regraft train` times itself.

    .venv-tools/bin/python tools/bench/train_step_peers.py torch ARGS...
    .venv-bench/bin/python tools/bench/train_step_peers.py ort ARGS...

ARGS: --model M.onnx --data D.npz --batch B --threads T --optimizer sgd|adamw
      --lr LR --epochs E --seed S --work DIR

The loop is regraft's (src/runtime/trainer.rs `fit`): per epoch a permutation of the
samples (made before the clock starts), then for each batch of B: gather x and y
by index (numpy fancy indexing; regraft copies rows into a new buffer), one training
step, and the loss read back to the host as a Python float. The clock covers the
whole batch loop of an epoch, nothing else (no validation, no checkpoint), as
regraft's `seconds` in metrics.jsonl does. Prints one JSON line:
{"peer": ..., "epoch_seconds": [...], "steps_per_epoch": n, "last_loss": ...}.

Both peers start from the weights in the ONNX file and use the optimizer regraft is
told to use by the driver:
  sgd    plain SGD (no momentum, no weight decay): torch.optim.SGD(lr), and ORT's
         SGDOptimizerV2 (OptimType.SGD, the only SGD ORT training has).
  adamw  AdamW(lr, betas (0.9, 0.999), eps 1e-8, weight decay 0.01): torch.optim.AdamW,
         and ORT's onnxblock.optim.AdamW with the same settings.
The step is forward, cross-entropy loss (mean), backward and the optimizer update:
  torch  opt.zero_grad(set_to_none=True); loss = F.cross_entropy(model(x), y);
         loss.backward(); opt.step(); loss.item()      (model in train() mode)
  ort    loss = module(x, y); optimizer.step(); module.lazy_reset_grad()
         (onnxruntime.training.api.Module/Optimizer on the artifacts of
         generate_artifacts: CrossEntropyLoss, every float initializer trainable
         except BatchNormalization statistics, which are frozen).
Threads: torch.set_num_threads(T) and one inter-op thread; ORT intra_op_num_threads=T
(the same SessionOptions for the training and the optimizer sessions).

`onnxruntime.training`'s package __init__ imports torch; .venv-bench has no torch, so
`onnxruntime.training.api` and `.artifacts` are imported with that __init__ bypassed.
"""

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=["torch", "ort"])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, help="a scratch folder (ORT artifacts)")
    return p.parse_args()


def loop(step, x, y, batch, epochs, seed):
    """regraft's epoch loop around `step(xb, yb) -> float loss`."""
    n = len(y)
    rng = np.random.default_rng(seed)
    secs = []
    loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            loss = step(x[idx], y[idx])
        secs.append(time.perf_counter() - t0)
    return secs, loss


def run_torch(a, x, y):
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT / "tools"))
    import regraft_models as rm

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    model = rm.build(rm.kind_of(Path(a.model).stem))
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(a.model).graph.initializer}
    state = {k: inits[k] for k in model.state_dict() if k in inits}
    model.load_state_dict(state, strict=False)
    model.train()
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.0, weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.item()

    return loop(step, x, y, a.batch, a.epochs, a.seed)


def import_ort_training():
    import onnxruntime

    pkg_dir = Path(onnxruntime.__file__).parent / "training"
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [str(pkg_dir)]
    pkg.__package__ = "onnxruntime.training"
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import api, artifacts, onnxblock

    return onnxruntime, api, artifacts, onnxblock


def run_ort(a, x, y):
    import logging

    import onnx

    logging.disable(logging.WARNING)
    ort, api, artifacts, onnxblock = import_ort_training()
    ort.set_default_logger_severity(3)
    m = onnx.load(a.model)
    stats = {n.input[i] for n in m.graph.node if n.op_type == "BatchNormalization" for i in (3, 4) if len(n.input) > i}
    trainable = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.name not in stats]
    frozen = [t.name for t in m.graph.initializer if t.name in stats]
    out = Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    if a.optimizer == "sgd":
        optim = artifacts.OptimType.SGD
    else:
        optim = onnxblock.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    artifacts.generate_artifacts(
        m,
        requires_grad=trainable,
        frozen_params=frozen,
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=optim,
        artifact_directory=str(out),
    )
    # The optimizer model is made from scratch with onnx 1.23's IR 14, which ORT 1.19
    # refuses; nothing in it needs more than IR 10.
    for f in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        g = onnx.load(str(out / f))
        if g.ir_version > 10:
            g.ir_version = 10
            onnx.save(g, str(out / f))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    state = api.CheckpointState.load_checkpoint(str(out / "checkpoint"))
    # No eval model: ORT 1.19 refuses the eval graph it makes for train-mode BatchNorm.
    module = api.Module(str(out / "training_model.onnx"), state, None, device="cpu", session_options=so)
    opt = api.Optimizer(str(out / "optimizer_model.onnx"), module)
    opt.set_learning_rate(a.lr)
    module.train()

    def step(xb, yb):
        loss = module(xb, yb)
        opt.step()
        module.lazy_reset_grad()
        return float(loss)

    return loop(step, x, y, a.batch, a.epochs, a.seed)


def main():
    a = parse()
    d = np.load(a.data)
    x = np.ascontiguousarray(d["x"], dtype=np.float32)
    y = np.ascontiguousarray(d["y"], dtype=np.int64)
    secs, loss = (run_torch if a.peer == "torch" else run_ort)(a, x, y)
    steps = -(-len(y) // a.batch)
    print(json.dumps({"peer": a.peer, "epoch_seconds": secs, "steps_per_epoch": steps, "last_loss": loss}))


if __name__ == "__main__":
    main()
