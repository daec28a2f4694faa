"""An independent view of ONNX files, for regraft's tests: what the `onnx` package and
ONNX Runtime's Python API say about a model, to compare with what regraft says.

Runs with the project's .venv (tools/setup): onnx, numpy and onnxruntime only.

    .venv/bin/python tools/onnx_view.py check FILE...          onnx.checker full check
    .venv/bin/python tools/onnx_view.py counts FILE            JSON: initializers, opsets, ops, io
    .venv/bin/python tools/onnx_view.py inputs FILE NPZ [--seed S] [--batch N]
                                                               random inputs for a model
    .venv/bin/python tools/onnx_view.py run FILE NPZ_IN NPZ_OUT  ORT CPU, every output
    .venv/bin/python tools/onnx_view.py compare FILE OTHER...  random inputs for FILE; every
                                                               OTHER must give bit-identical outputs
    .venv/bin/python tools/onnx_view.py synth DIR              small test models (onnx.helper)

Every failure exits non-zero with a one-line message on stderr.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# What regraft writes: IR 10 loads on ORT 1.31 (onnx 1.23's helpers default to IR 14,
# which it refuses).
IR_VERSION = 10
OPSET = 18


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def one_line(e):
    return " ".join(str(e).split())


def cmd_check(args):
    bad = 0
    for f in args.files:
        try:
            # The path form resolves external data relative to the model's folder.
            onnx.checker.check_model(f, full_check=True)
        except Exception as e:  # noqa: BLE001 - any checker failure is reported the same way
            print(f"error: {f}: {one_line(e)}", file=sys.stderr)
            bad += 1
        else:
            print(f"{f}: ok")
    return 1 if bad else 0


def op_key(node):
    d = node.domain
    return node.op_type if d in ("", "ai.onnx") else f"{d}::{node.op_type}"


def cmd_counts(args):
    m = onnx.load(args.file)  # loads external data too
    g = m.graph
    inits = []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        inits.append(
            {
                "name": t.name,
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "elements": int(a.size),
                "bytes": int(a.nbytes),
            }
        )
    ops = {}
    for n in g.node:
        ops[op_key(n)] = ops.get(op_key(n), 0) + 1
    init_names = {t.name for t in g.initializer}
    out = {
        "ir_version": m.ir_version,
        "opsets": {
            (o.domain if o.domain not in ("", "ai.onnx") else "ai.onnx"): o.version
            for o in m.opset_import
        },
        "inputs": [i.name for i in g.input if i.name not in init_names],
        "outputs": [o.name for o in g.output],
        "nodes": len(g.node),
        "ops": ops,
        "initializers": inits,
        "total_elements": sum(i["elements"] for i in inits),
        "total_bytes": sum(i["bytes"] for i in inits),
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # one thread: the same result on every run
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def feeds_for(path, seed, batch):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session(path).get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else batch for d in i.shape]
        dt = ORT_NUMPY.get(i.type)
        if dt is None:
            fail(f"{path}: input '{i.name}' has type {i.type}, for which no random input is made")
        if np.issubdtype(dt, np.floating):
            a = rng.standard_normal(shape).astype(dt)
        elif dt is np.bool_:
            a = rng.random(shape) < 0.5
        else:
            a = rng.integers(0, 2, shape).astype(dt)
        feeds[i.name] = a
    return feeds


def run_all(path, feeds):
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def cmd_inputs(args):
    np.savez(args.npz, **feeds_for(args.file, args.seed, args.batch))
    return 0


def cmd_run(args):
    with np.load(args.npz_in) as z:
        feeds = {k: z[k] for k in z.files}
    np.savez(args.npz_out, **run_all(args.file, feeds))
    return 0


def cmd_compare(args):
    # For deterministic graphs: random ops (Dropout in training mode with a ratio above 0)
    # draw from ORT's process-wide generator, which advances from session to session.
    feeds = feeds_for(args.file, args.seed, args.batch)
    want = run_all(args.file, feeds)
    for other in args.others:
        got = run_all(other, feeds)
        if sorted(got) != sorted(want):
            fail(f"{other}: outputs {sorted(got)}, {args.file} has {sorted(want)}")
        for k, x in want.items():
            y = got[k]
            if x.dtype != y.dtype or x.shape != y.shape:
                fail(f"{other}: '{k}' is {y.dtype}{list(y.shape)}, in {args.file} {x.dtype}{list(x.shape)}")
            if x.tobytes() != y.tobytes():
                diff = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
                fail(f"{other}: '{k}' differs from {args.file} (max abs difference {diff})")
    print(f"{len(args.others)} models give bit-identical outputs to {args.file}")
    return 0


# ---------------------------------------------------------------------------------------
# Small models made with onnx.helper, for tests that need models before (or besides) the
# PyTorch exports under models/ and tests/data/models/.


def _model(graph, opsets=None):
    m = helper.make_model(
        graph,
        opset_imports=opsets or [helper.make_opsetid("", OPSET)],
        producer_name="onnx_view.py synth",
    )
    m.ir_version = IR_VERSION
    return m


def _init(rng, name, *shape, scale=0.1):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def synth_mlp(rng):
    """x[N,64] -> Gemm 64x32 -> Relu -> Gemm 32x10 -> logits[N,10]."""
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    inits = [
        _init(rng, "fc1.weight", 32, 64),
        _init(rng, "fc1.bias", 32),
        _init(rng, "fc2.weight", 10, 32),
        _init(rng, "fc2.bias", 10),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _model(g)


def synth_conv_bn(rng):
    """x[N,64] -> Reshape [N,1,8,8] -> Conv 3x3 (8 ch) -> BatchNormalization -> Relu
    -> MaxPool 2x2 -> Flatten -> Gemm -> logits[N,10]."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["img"], name="to_image"),
        helper.make_node("Conv", ["img", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
            ["b"],
            name="bn",
            epsilon=1e-5,
        ),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape"),
        _init(rng, "conv.weight", 8, 1, 3, 3, scale=0.3),
        (numpy_helper.from_array((1 + 0.1 * rng.standard_normal(8)).astype(np.float32), "bn.weight")),
        _init(rng, "bn.bias", 8),
        _init(rng, "bn.running_mean", 8),
        numpy_helper.from_array((0.5 + rng.random(8)).astype(np.float32), "bn.running_var"),
        _init(rng, "fc.weight", 10, 128),
        _init(rng, "fc.bias", 10),
    ]
    g = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _model(g)


def cmd_synth(args):
    rng = np.random.default_rng(0)
    os.makedirs(args.dir, exist_ok=True)
    made = []
    for name, m in [("mlp", synth_mlp(rng)), ("conv_bn", synth_conv_bn(rng))]:
        onnx.checker.check_model(m, full_check=True)
        path = os.path.join(args.dir, f"{name}.onnx")
        onnx.save(m, path)
        made.append(path)
    # The MLP again, with its weights in an external data file beside it.
    ext = synth_mlp(np.random.default_rng(1))
    ext.graph.name = "mlp_external"
    path = os.path.join(args.dir, "mlp_external.onnx")
    onnx.save(
        ext,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp_external.weights",
        size_threshold=0,
    )
    onnx.checker.check_model(path, full_check=True)
    made.append(path)
    print("\n".join(made))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="onnx.checker.check_model(path, full_check=True)")
    c.add_argument("files", nargs="+")
    c.set_defaults(fn=cmd_check)
    c = sub.add_parser("counts", help="initializers, opsets, op histogram, inputs and outputs as JSON")
    c.add_argument("file")
    c.set_defaults(fn=cmd_counts)
    c = sub.add_parser("inputs", help="random inputs for a model's graph inputs, as .npz")
    c.add_argument("file")
    c.add_argument("npz")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch", type=int, default=4, help="size of every symbolic dimension")
    c.set_defaults(fn=cmd_inputs)
    c = sub.add_parser("run", help="run a model on ORT's CPU provider, store every output")
    c.add_argument("file")
    c.add_argument("npz_in")
    c.add_argument("npz_out")
    c.set_defaults(fn=cmd_run)
    c = sub.add_parser("compare", help="fail unless the other models' outputs are bit-identical to FILE's")
    c.add_argument("file")
    c.add_argument("others", nargs="+", metavar="other")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch", type=int, default=4, help="size of every symbolic dimension")
    c.set_defaults(fn=cmd_compare)
    c = sub.add_parser("synth", help="write small test models made with onnx.helper")
    c.add_argument("dir")
    c.set_defaults(fn=cmd_synth)
    args = p.parse_args()
    try:
        return args.fn(args)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        fail(f"{getattr(args, 'file', '')}: {type(e).__name__}: {one_line(e)}".lstrip(": "))


if __name__ == "__main__":
    sys.exit(main())
