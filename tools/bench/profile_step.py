#!/usr/bin/env python3
"""Where a step graph's time goes: ONNX Runtime's profiler on one graph, by op type and
by node.

    .venv/bin/python tools/bench/profile_step.py GRAPH.onnx [--batch 64] [--threads 1]
                                                 [--runs 40] [--top 15]

Feeds random inputs (integer inputs: labels in 0..9; `lr` 0.01, `step` 1; every symbolic
dim is the batch), runs 5 warm-up and --runs timed runs with the profiler off (the step
time), then the same with the profiler on, and prints the mean kernel time per run of
each op type and of the --top slowest nodes. The profiler adds its own overhead, more for
graphs with many small nodes, so compare its figures with each other, not with the step
time. For example, the CNN's training step as tools/bench/train_step runs it:

    target/release/regraft rewrite models/cnn.onnx --batch-size 64 --momentum 0 \\
        --nesterov false --weight-decay 0 -o target/bench/cnn_sgd
    .venv/bin/python tools/bench/profile_step.py target/bench/cnn_sgd/train_step.onnx --batch 64
"""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort


def session(path, threads, profile_dir=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "step")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds_for(sess, batch):
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if "int64" in i.type:
            feeds[i.name] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            feeds[i.name] = np.asarray(rng.standard_normal(shape) * 0.1, dtype=np.float32)
    for name, value in (("lr", 0.01), ("step", 1.0)):
        if name in feeds:
            feeds[name] = np.asarray(value, dtype=np.float32).reshape(feeds[name].shape)
    return feeds


def timed(sess, feeds, runs):
    for _ in range(5):
        sess.run(None, feeds)
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feeds)
    return (time.perf_counter() - t) / runs * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graph")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    plain = session(a.graph, a.threads)
    feeds = feeds_for(plain, a.batch)
    step = timed(plain, feeds, a.runs)
    with tempfile.TemporaryDirectory() as d:
        prof = session(a.graph, a.threads, d)
        timed(prof, feeds, a.runs)
        events = json.load(open(prof.end_profiling()))
    runs = a.runs + 5
    by_op, count, by_node = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] += e["dur"]
            count[op] += 1
            by_node[(op, e["name"][: -len("_kernel_time")])] += e["dur"]
    total = sum(by_op.values()) / runs / 1e3
    print(f"{a.graph}: {step:.2f} ms per run without the profiler; {total:.2f} ms of kernels per run with it\n")
    print("| op type | nodes | ms per run |\n| --- | ---: | ---: |")
    for op, us in by_op.most_common():
        print(f"| {op} | {count[op] // runs} | {us / runs / 1e3:.3f} |")
    print(f"\n| slowest nodes | op | ms per run |\n| --- | --- | ---: |")
    for (op, name), us in by_node.most_common(a.top):
        print(f"| {name} | {op} | {us / runs / 1e3:.3f} |")


if __name__ == "__main__":
    main()
