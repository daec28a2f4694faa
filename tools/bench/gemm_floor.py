#!/usr/bin/env python3
"""The matrix products of an MLP's training step alone: the time no training step of that
MLP can beat with the same GEMM kernels, whatever its graph, loop or optimizer.

    .venv/bin/python tools/bench/gemm_floor.py --model models/mlp.onnx --batch 128
        [--threads 1] [--epochs 4] [--steps 14] [--backend ort|torch] [--reps 200]

A training step of an MLP with layers (in_i -> out_i) at batch B multiplies
  forward          [B, in_i]  x [in_i, out_i]     every layer
  weight gradient  [out_i, B] x [B, in_i]         every layer
  input gradient   [B, out_i] x [out_i, in_i]     every layer but the first (the data
                                                  input needs no gradient)
and nothing else it does is a GEMM (bias adds, activations, the loss, the update are
elementwise or reductions). The layer shapes are read from the model's Gemm (or MatMul)
weights.

--backend ort (the default; .venv's onnxruntime 1.31.1, regraft's runtime): for every
product it first times each way standard ONNX ops can write it, on inputs laid out as
that way wants them (generous to the graph: a layout change costs nothing here): Gemm
with transA and transB each 0 or 1, and MatMul, for the product and for its transpose
(C^T = B^T A^T), each a one-node graph run --reps times through IoBinding, and keeps the
fastest. Then it builds one graph of all the step's products, each written its fastest
way, and times it as regraft's trainer runs a step (one IoBinding run per step, inputs
and outputs bound once, intra_op_num_threads = --threads, sequential execution).
--backend torch (.venv-tools): the same products as torch.mm on contiguous tensors
(torch.set_num_threads), best of the two orientations, timed the same way.

Timing mirrors tools/bench/train_step: --epochs epochs of --steps steps, each epoch timed
as a whole. Prints one JSON line like train_step_peers.py:
{"peer": "floor-ort", "epoch_seconds": [...], "steps_per_epoch": n, "gemms": [...]},
where gemms lists each product with its fastest form and its median ms alone.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--reps", type=int, default=200, help="runs of each candidate form")
    p.add_argument("--backend", choices=["ort", "torch"], default="ort")
    return p.parse_args()


def die(msg):
    print(f"gemm_floor: {msg}", file=sys.stderr)
    sys.exit(1)


def layer_shapes(path):
    """(in, out) of each Gemm/MatMul layer whose weight is an initializer, in graph order."""
    import onnx

    model = onnx.load(path)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = inits[node.input[1]]
        if len(dims) != 2:
            continue
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        layers.append((dims[1], dims[0]) if trans_b else dims)
    if not layers:
        die(f"{path}: no Gemm or MatMul layer with a 2-D weight initializer")
    return layers


def products(layers, batch):
    """(label, M, K, N) of every GEMM in one training step."""
    out = []
    for i, (fan_in, fan_out) in enumerate(layers):
        out.append((f"forward {i}", batch, fan_in, fan_out))
        out.append((f"weight grad {i}", fan_out, batch, fan_in))
        if i > 0:
            out.append((f"input grad {i}", batch, fan_out, fan_in))
    return out


def epochs_of(run_step, epochs, steps):
    for _ in range(3):
        run_step()
    secs = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _ in range(steps):
            run_step()
        secs.append(time.perf_counter() - t0)
    return secs


def median_ms(run_step, reps):
    for _ in range(5):
        run_step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


# ---- ONNX Runtime -------------------------------------------------------------------------


def ort_forms(m, k, n):
    """Every standard-op way to compute an [m, n] product (or its [n, m] transpose):
    (name, op, transA, transB, shape of A, shape of B)."""
    forms = []
    for tag, (p, q) in (("C", (m, n)), ("C^T", (n, m))):
        for ta in (0, 1):
            for tb in (0, 1):
                a = (k, p) if ta else (p, k)
                b = (q, k) if tb else (k, q)
                forms.append((f"Gemm(transA={ta},transB={tb}) -> {tag}", "Gemm", ta, tb, a, b))
        forms.append((f"MatMul -> {tag}", "MatMul", 0, 0, (p, k), (k, q)))
    return forms


def ort_graph(items):
    """One graph with a node per (op, transA, transB, A shape, B shape) item."""
    from onnx import TensorProto, helper

    nodes, inputs, outputs = [], [], []
    for i, (op, ta, tb, a, b) in enumerate(items):
        out_shape = (a[1] if ta else a[0], b[0] if tb else b[1])
        inputs += [helper.make_tensor_value_info(f"a{i}", TensorProto.FLOAT, a),
                   helper.make_tensor_value_info(f"b{i}", TensorProto.FLOAT, b)]
        outputs.append(helper.make_tensor_value_info(f"c{i}", TensorProto.FLOAT, out_shape))
        attrs = {"transA": ta, "transB": tb} if op == "Gemm" else {}
        nodes.append(helper.make_node(op, [f"a{i}", f"b{i}"], [f"c{i}"], **attrs))
    graph = helper.make_graph(nodes, "gemm_floor", inputs, outputs)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])


def ort_runner(items, threads, rng):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(ort_graph(items).SerializeToString(), so, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    keep = []
    for i, (_, ta, tb, a, b) in enumerate(items):
        for name, shape in ((f"a{i}", a), (f"b{i}", b)):
            value = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal(shape).astype(np.float32))
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
        out_shape = (a[1] if ta else a[0], b[0] if tb else b[1])
        out = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32)
        keep.append(out)
        binding.bind_ortvalue_output(f"c{i}", out)
    return lambda: sess.run_with_iobinding(binding), keep


def ort_floor(prods, a, rng):
    chosen, report = [], []
    for label, m, k, n in prods:
        best = None
        for name, op, ta, tb, sa, sb in ort_forms(m, k, n):
            run_step, _keep = ort_runner([(op, ta, tb, sa, sb)], a.threads, rng)
            ms = median_ms(run_step, a.reps)
            if best is None or ms < best[0]:
                best = (ms, name, (op, ta, tb, sa, sb))
        chosen.append(best[2])
        report.append({"product": label, "m": m, "k": k, "n": n, "form": best[1], "ms": round(best[0], 4)})
    run_step, _keep = ort_runner(chosen, a.threads, rng)
    return epochs_of(run_step, a.epochs, a.steps), report


# ---- PyTorch ------------------------------------------------------------------------------


def torch_floor(prods, a, rng):
    import torch

    torch.set_num_threads(a.threads)
    chosen, report = [], []
    for label, m, k, n in prods:
        best = None
        for tag, (p, q) in (("C", (m, n)), ("C^T", (n, m))):
            x = torch.from_numpy(rng.standard_normal((p, k)).astype(np.float32))
            y = torch.from_numpy(rng.standard_normal((k, q)).astype(np.float32))
            out = torch.empty(p, q)
            ms = median_ms(lambda: torch.mm(x, y, out=out), a.reps)
            if best is None or ms < best[0]:
                best = (ms, f"torch.mm -> {tag}", (x, y, out))
        chosen.append(best[2])
        report.append({"product": label, "m": m, "k": k, "n": n, "form": best[1], "ms": round(best[0], 4)})

    def run_step():
        for x, y, out in chosen:
            torch.mm(x, y, out=out)

    return epochs_of(run_step, a.epochs, a.steps), report


def main():
    a = parse()
    prods = products(layer_shapes(a.model), a.batch)
    rng = np.random.default_rng(0)
    floor = ort_floor if a.backend == "ort" else torch_floor
    secs, report = floor(prods, a, rng)
    flops = sum(2 * m * k * n for _, m, k, n in prods)
    step_s = statistics.median(secs) / a.steps
    print(json.dumps({"peer": f"floor-{a.backend}", "epoch_seconds": secs, "steps_per_epoch": a.steps,
                      "mflop_per_step": flops / 1e6, "gflops": flops / step_s / 1e9, "gemms": report}))


if __name__ == "__main__":
    main()
