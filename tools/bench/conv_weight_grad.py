#!/usr/bin/env python3
"""The weight gradient of a Conv in standard ONNX ops, two ways, on ONNX Runtime (CPU):

  conv    Conv(Xᵀ, dYᵀ): X as [C, N, H, W] convolved with dY as the kernel [M, N, Ho, Wo]
          (regraft's form for grouped convs and large feature maps);
  im2col  what src/autodiff/rules/conv.rs writes for ungrouped convs with small static
          per-sample sizes: X to NHWC, Pad, one Slice per kernel offset stacked on axis 0,
          Reshape to [K, N·Ho·Wo, C], one batched MatMul with dY as [M, N·Ho·Wo],
          Transpose and Reshape to [M, C, kh, kw].

    .venv/bin/python tools/bench/conv_weight_grad.py [N C H W M k] [--threads T]

Defaults: block 1 of models/cnn.onnx at batch 64 (X [64,16,8,8], 16 output channels,
3x3, stride 1, pad 1). Prints the best of 5 x 50 runs of each graph and their largest
difference (the two must agree).
"""
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h


def const(name, values):
    return h.make_node("Constant", [], [name],
                       value=onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))


def graphs(N, C, H, W, M, k):
    x = h.make_tensor_value_info("X", T.FLOAT, [N, C, H, W])
    dy = h.make_tensor_value_info("DY", T.FLOAT, [N, M, H, W])
    out = h.make_tensor_value_info("DW", T.FLOAT, [M, C, k, k])
    p = k // 2
    conv = [h.make_node("Transpose", ["X"], ["xt"], perm=[1, 0, 2, 3]),
            h.make_node("Transpose", ["DY"], ["dyt"], perm=[1, 0, 2, 3]),
            h.make_node("Conv", ["xt", "dyt"], ["r"], pads=[p] * 4),
            h.make_node("Transpose", ["r"], ["DW"], perm=[1, 0, 2, 3])]
    im = [h.make_node("Transpose", ["X"], ["xn"], perm=[0, 2, 3, 1]),
          const("pads", [0, p, p, 0, 0, p, p, 0]), h.make_node("Pad", ["xn", "pads"], ["xp"]),
          const("axes", [1, 2])]
    cols = []
    for a in range(k):
        for b in range(k):
            im += [const(f"s{a}{b}", [a, b]), const(f"e{a}{b}", [a + H, b + W]),
                   h.make_node("Slice", ["xp", f"s{a}{b}", f"e{a}{b}", "axes"], [f"c{a}{b}"])]
            cols.append(f"c{a}{b}")
    im += [h.make_node("Concat", cols, ["cat"], axis=0), const("s3", [k * k, -1, C]),
           h.make_node("Reshape", ["cat", "s3"], ["cols"]),
           h.make_node("Transpose", ["DY"], ["dyt"], perm=[1, 0, 2, 3]),
           h.make_node("Flatten", ["dyt"], ["dyf"], axis=1),
           h.make_node("MatMul", ["dyf", "cols"], ["mm"]),
           h.make_node("Transpose", ["mm"], ["mt"], perm=[1, 2, 0]), const("s4", [0, 0, k, k]),
           h.make_node("Reshape", ["mt", "s4"], ["DW"])]
    return [h.make_graph(n, name, [x, dy], [out]) for name, n in (("conv", conv), ("im2col", im))]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
    if "--threads" in sys.argv:
        args.remove(str(threads))
    N, C, H, W, M, k = [int(v) for v in args] if args else [64, 16, 8, 8, 16, 3]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rng = np.random.default_rng(0)
    feeds = {"X": rng.standard_normal((N, C, H, W)).astype(np.float32),
             "DY": rng.standard_normal((N, M, H, W)).astype(np.float32)}
    res = []
    for g in graphs(N, C, H, W, M, k):
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=10)
        onnx.checker.check_model(m, full_check=True)
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        res.append(s.run(None, feeds)[0])
        for _ in range(10):
            s.run(None, feeds)
        best = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(50):
                s.run(None, feeds)
            best.append((time.perf_counter() - t) / 50 * 1e3)
        print(f"{g.name:7s} {min(best):.3f} ms")
    # Reference in float64: dW[m, c, a, b] = Σ dY[n, m, i, j]·Xpad[n, c, i + a, j + b].
    p = k // 2
    xp = np.pad(feeds["X"].astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    ref = np.zeros((M, C, k, k))
    for a in range(k):
        for b in range(k):
            ref[:, :, a, b] = np.einsum("nmij,ncij->mc", feeds["DY"], xp[:, :, a:a + H, b:b + W])
    scale = np.abs(ref).max()
    for name, r in zip(("conv", "im2col"), res):
        print(f"{name:7s} max |dW - float64 reference| / max |dW| = {np.abs(r - ref).max() / scale:.1e}")


if __name__ == "__main__":
    main()
