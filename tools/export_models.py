#!/usr/bin/env python3
"""Export regraft's committed ONNX test models from PyTorch.

Pinned: torch==2.15.0, onnx==1.23.2, onnxscript==0.7.2, onnxruntime==1.31.1
(the project venv .venv-tools has exactly these).

Run from the repository root:

    .venv-tools/bin/python tools/export_models.py

It is deterministic (fixed seeds, CPU only): rerunning rewrites byte-identical
files. It makes

  models/mlp.onnx, models/cnn.onnx, models/transformer.onnx
      TorchScript exporter (dynamo=False), opset 18,
      training=TrainingMode.TRAINING, do_constant_folding=False,
      input "x" [batch, 64] float32, output "logits" [batch, 10].
  models/manifest.json
  tests/data/models/
      {mlp,cnn,transformer}_dynamo.onnx  torch.export-based exporter
                                          (dynamo=True, optimize=False), opset 18
      {mlp,cnn}_opset13.onnx             TorchScript exporter, opset 13, training
      mlp_external.onnx + mlp_external.onnx.data
                                          models/mlp.onnx re-saved by onnx with
                                          all tensors in one external file
      manifest.json

The modules are defined in tools/regraft_models.py. All variants of one kind
share the same weights (one seeded module per kind).

Things this script does on purpose (see the manifests' "notes" too):

* After default init, BatchNorm/LayerNorm affine parameters and BatchNorm
  running stats are perturbed deterministically (default 1/0 values would let
  a test miss swapped scale/shift or a mean/var mix-up).
* Every file is re-saved with ir_version = 10: onnxruntime 1.31.1 refuses
  IR 14 (onnx 1.23's default) and the TorchScript exporter writes IR 8.
* The TorchScript exporter traces the module with one real train-mode forward
  pass, which updates BatchNorm running_mean/var in place before they are
  serialized. Buffer initializers are therefore reset to the module's
  pre-export values (parameters are asserted untouched).
* dynamo: optimize=False, because the ONNX optimizer constant-folds weights
  (e.g. in_proj_weight -> transposed anonymous constant "val_14", pos.weight
  gathered by arange folded to a constant) and fuses BatchNorm into Conv, so
  the trainable initializers disappear.
* dynamo + BatchNorm: onnxscript's torchlib (0.7.2) lowers
  aten::_native_batch_norm_legit_functional with training forced to False, so
  a train()-mode export silently yields inference BatchNormalization (running
  stats). cnn_dynamo.onnx is therefore exported with the module in eval();
  its manifest entry says torch_mode "eval". MLP/Transformer dynamo exports
  are done in train() mode (no BN; dropout p=0 is decomposed away).
* dynamo node metadata "pkg.torch.onnx.stack_trace" (absolute source paths)
  is removed so the bytes do not depend on the checkout location.

Verification (printed): onnx.checker full_check, onnxruntime CPU session on
batches of 32 and 5, max |logits_ort - logits_torch| with torch in the same
mode as the export (train-mode BN uses batch statistics in both).
"""

import copy
import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import regraft_models as rm  # noqa: E402

IR_VERSION = 10
SEEDS = {"mlp": 0, "cnn": 1, "transformer": 2}
TOL = 1e-4


def perturb_norms(module, seed):
    """Move norm layers away from their identity-like default init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                n = m.weight.numel()
                m.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.running_mean.numel()
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))


def make_module(kind):
    torch.manual_seed(SEEDS[kind])
    module = rm.build(kind)
    perturb_norms(module, 100 + SEEDS[kind])
    return module.train()


def float_buffers(module):
    return {k: v for k, v in module.named_buffers() if v.is_floating_point()}


def export_torchscript(module, path, opset):
    m = copy.deepcopy(module).train()
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.load(str(path))


def export_dynamo(module, path, mode):
    m = copy.deepcopy(module)
    m.train(mode == "train")
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m,
            (x,),
            dynamo=True,
            optimize=False,
            opset_version=18,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    model = prog.model_proto
    # Node metadata carries Python stack traces with absolute paths of this
    # checkout and the venv: drop them so the file does not depend on where
    # it was exported (the other pkg.torch.onnx.* entries are kept).
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model


def sync_initializers(model, module):
    """Reset exported buffers to the module's values; check parameters.

    Returns {parameter name: initializer name} and the list of buffers reset.
    """
    inits = {i.name: i for i in model.graph.initializer}
    params = dict(module.named_parameters())
    bufs = float_buffers(module)
    mapping, reset = {}, []
    for name, p in params.items():
        if name not in inits:
            raise SystemExit(f"parameter {name} has no initializer of that name")
        a = numpy_helper.to_array(inits[name])
        if a.shape != tuple(p.shape) or not np.array_equal(a, p.detach().numpy()):
            raise SystemExit(f"initializer {name} differs from the parameter")
        mapping[name] = name
    for name, b in bufs.items():
        if name not in inits:
            continue  # not used by the graph (e.g. BN buffers absent)
        want = b.detach().numpy()
        if not np.array_equal(numpy_helper.to_array(inits[name]), want):
            inits[name].CopyFrom(numpy_helper.from_array(want, name))
            reset.append(name)
    return mapping, reset


def op_histogram(model):
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def verify(path, module, mode):
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n, seed in ((32, 11), (5, 12)):
        x = torch.rand(n, 64, generator=torch.Generator().manual_seed(seed))
        m = copy.deepcopy(module)
        m.train(mode == "train")
        with torch.no_grad():
            want = m(x).numpy()
        (got,) = sess.run(["logits"], {"x": x.numpy()})
        assert got.shape == (n, 10), got.shape
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"  {path.relative_to(ROOT)}: max|ort-torch| = {worst:.3e} ({mode} mode)")
    assert worst < TOL, f"{path}: logits differ by {worst}"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def entry(path, kind, module, model, exporter, opset, mode, mapping, reset, notes):
    params = dict(module.named_parameters())
    bufs = float_buffers(module)
    inits = [i.name for i in model.graph.initializer]
    e = {
        "file": path.name,
        "module": kind,
        "exporter": exporter,
        "opset": opset,
        "ir_version": model.ir_version,
        "torch_mode": mode,
        "torch_version": torch.__version__.split("+")[0],
        "trainable_parameters": sum(p.numel() for p in params.values()),
        "buffers": sum(b.numel() for b in bufs.values()),
        "parameter_names": list(params),
        "parameter_shapes": {k: list(p.shape) for k, p in params.items()},
        "buffer_names": [k for k in bufs if k in inits],
        "initializer_for_parameter": mapping,
        "other_initializers": [
            n for n in inits if n not in params and n not in bufs
        ],
        "op_histogram": op_histogram(model),
        "sha256": sha256(path),
    }
    if reset:
        notes = notes + [
            "BN running stats reset to pre-export values after the TorchScript "
            "tracer's train-mode forward had updated them: " + ", ".join(reset)
        ]
    if notes:
        e["notes"] = notes
    return e


def finish(model, path, kind, module, exporter, opset, mode, notes=(), external=None):
    mapping, reset = sync_initializers(model, module)
    model.ir_version = IR_VERSION
    if external:
        data = path.parent / external
        if data.exists():
            data.unlink()  # onnx appends to an existing data file
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external,
            size_threshold=0,
            convert_attribute=False,
        )
        data.chmod(0o644)
    else:
        onnx.save_model(model, str(path))
    verify(path, module, mode)
    e = entry(path, kind, module, model, exporter, opset, mode, mapping, reset, list(notes))
    if external:
        e["external_data"] = external
        e["external_data_sha256"] = sha256(path.parent / external)
    return e


def main():
    torch.use_deterministic_algorithms(True)
    models_dir = ROOT / "models"
    test_dir = ROOT / "tests" / "data" / "models"
    models_dir.mkdir(exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)

    modules = {kind: make_module(kind) for kind in rm.MODELS}
    main_manifest, test_manifest = {}, {}

    print("models/ (TorchScript, opset 18, training):")
    for kind, module in modules.items():
        path = models_dir / f"{kind}.onnx"
        model = export_torchscript(module, path, 18)
        main_manifest[kind] = finish(model, path, kind, module, "torchscript", 18, "train")

    print("tests/data/models/:")
    for kind, module in modules.items():
        path = test_dir / f"{kind}_dynamo.onnx"
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
        mode = "eval" if has_bn else "train"
        notes = ["dynamo=True, optimize=False (the optimizer folds weights into anonymous constants)"]
        if has_bn:
            notes.append(
                "exported in eval(): onnxscript 0.7.2 torchlib forces training=False "
                "for aten::_native_batch_norm_legit_functional, so BatchNormalization "
                "is inference-mode (running stats) even for a train()-mode export"
            )
        model = export_dynamo(module, path, mode)
        test_manifest[path.stem] = finish(model, path, kind, module, "dynamo", 18, mode, notes)

    for kind in ("mlp", "cnn"):
        module = modules[kind]
        path = test_dir / f"{kind}_opset13.onnx"
        model = export_torchscript(module, path, 13)
        notes = []
        if kind == "cnn":
            notes.append(
                "opset 13 BatchNormalization-9 has no training_mode attribute: "
                "training mode is expressed by its 5 outputs"
            )
        test_manifest[path.stem] = finish(
            model, path, kind, module, "torchscript", 13, "train", notes
        )

    path = test_dir / "mlp_external.onnx"
    model = onnx.load(str(models_dir / "mlp.onnx"))
    test_manifest[path.stem] = finish(
        model,
        path,
        "mlp",
        modules["mlp"],
        "torchscript",
        18,
        "train",
        ["models/mlp.onnx re-saved with onnx external data: all tensors in one "
         "file, size_threshold=0"],
        external="mlp_external.onnx.data",
    )

    for manifest, d in ((main_manifest, models_dir), (test_manifest, test_dir)):
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("wrote models/manifest.json and tests/data/models/manifest.json")


if __name__ == "__main__":
    main()
