#!/usr/bin/env python3
"""The benchmark peer: ONNX Runtime's own training-artifact generator.

Runs in .venv-bench (onnxruntime-training-cpu==1.19.2, onnx==1.23.2, no torch):

    .venv-bench/bin/python tools/bench/ort_artifacts.py MODEL OUT_DIR

calls `onnxruntime.training.artifacts.generate_artifacts` with every trainable
parameter in requires_grad, the BatchNormalization running statistics in
frozen_params, CrossEntropyLoss and AdamW, and prints one JSON line:
{"seconds": <wall time>, "cpu_seconds": <CPU time, all threads>, "requires_grad": n,
"frozen": n}. The timed part reads the
model (`onnx.load`) and writes the training, eval and optimizer models and the
checkpoint, as `regraft grad` reads and writes its model. Peak memory is read by the
caller (tools/bench/grad_build) from this process's rusage.

The package `onnxruntime.training` imports torch in its `__init__`; this venv has no
torch, so `onnxruntime.training.artifacts` is loaded with that `__init__` bypassed.
"""

import json
import logging
import sys
import time
import types
from pathlib import Path

import onnx
import onnxruntime


def load_artifacts_module():
    """Import onnxruntime.training.artifacts without running the package __init__."""
    pkg_dir = Path(onnxruntime.__file__).parent / "training"
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [str(pkg_dir)]
    pkg.__package__ = "onnxruntime.training"
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts

    return artifacts


def split_params(model_path):
    """(trainable, frozen): float initializers, the BatchNorm statistics frozen."""
    m = onnx.load(model_path, load_external_data=False)
    stats = {
        n.input[i]
        for n in m.graph.node
        if n.op_type == "BatchNormalization"
        for i in (3, 4)
        if len(n.input) > i
    }
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    trainable, frozen = [], []
    for t in m.graph.initializer:
        if t.data_type not in floats:
            continue
        (frozen if t.name in stats else trainable).append(t.name)
    return trainable, frozen


def main():
    model, out_dir = sys.argv[1], sys.argv[2]
    logging.disable(logging.WARNING)
    onnxruntime.set_default_logger_severity(3)
    artifacts = load_artifacts_module()
    trainable, frozen = split_params(model)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    # A ModelProto, not the path: with a path, onnxblock re-saves the model to a
    # temporary external-data file on every step, which onnx >= 1.17 refuses to
    # overwrite (FileExistsError), and the model is far below protobuf's 2 GiB.
    artifacts.generate_artifacts(
        onnx.load(model),
        requires_grad=trainable,
        frozen_params=frozen,
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=out_dir,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "requires_grad": len(trainable), "frozen": len(frozen)}))


if __name__ == "__main__":
    main()
