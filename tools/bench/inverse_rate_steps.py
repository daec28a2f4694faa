"""Interleaved per-step timing of two `regraft rewrite` folders' train_step.onnx.

    .venv/bin/python tools/bench/inverse_rate_steps.py BASE_DIR REG_DIR --data D.npz
        [--batch 128] [--threads 1] [--steps 400] [--block 4]

Runs each folder's train_step.onnx the way regraft's trainer does: ONNX Runtime with
`threads` intra-op threads and all graph optimizations, the training state bound with
IoBinding in two sets that swap every step (ping-pong: the updated state is written into
the other set, nothing is copied), the batch, labels, lr and step bound per step, and the
scalar outputs (loss, correct, the inverse-rate diagnostics) fetched. The two variants
alternate every `block` steps on the same batches (the data in order, wrapping around),
after a warm-up of 3 blocks each. Per block it records the calling thread's CPU time
(time.thread_time: with one intra-op thread ONNX Runtime computes on the calling thread,
so this excludes time spent waiting for a core on a shared machine) and the wall time.
Prints one JSON line: per-variant medians (ms per step) and the median of the per-pair
ratios.
"""

import argparse
import json
import statistics
import struct
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load_state(path):
    buf = Path(path).read_bytes()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        assert v["dtype"] == "F32", (name, v["dtype"])
        s, e = v["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + s:8 + n + e], dtype=np.float32).reshape(v["shape"]).copy()
    return out


class Stepper:
    def __init__(self, folder, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(Path(folder) / "train_step.onnx"), so,
                                         providers=["CPUExecutionProvider"])
        state = load_state(Path(folder) / "state.safetensors")
        ins = {i.name for i in self.sess.get_inputs()}
        outs = [o.name for o in self.sess.get_outputs()]
        # State input `p` is updated by output `p_new` (artifacts.rs names them so).
        self.pairs = [(o[:-4], o) for o in outs if o.endswith("_new") and o[:-4] in ins]
        self.scalars = [o for o in outs if not (o.endswith("_new") and o[:-4] in ins)]
        missing = [p for p, _ in self.pairs if p not in state]
        assert not missing, f"state lacks {missing}"
        sets = [{p: ort.OrtValue.ortvalue_from_numpy(state[p].copy()) for p, _ in self.pairs} for _ in range(2)]
        self.bindings = []
        for k in range(2):
            b = self.sess.io_binding()
            for p, o in self.pairs:
                b.bind_ortvalue_input(p, sets[k][p])
                b.bind_ortvalue_output(o, sets[1 - k][p])
            for o in self.scalars:
                b.bind_output(o, "cpu")
            self.bindings.append(b)
        self.current = 0
        self.step_no = 0

    def step(self, x, y, lr):
        b = self.bindings[self.current]
        self.step_no += 1
        b.bind_cpu_input("x", x)
        b.bind_cpu_input("labels", y)
        b.bind_cpu_input("lr", np.array(lr, dtype=np.float32))
        b.bind_cpu_input("step", np.array(float(self.step_no), dtype=np.float32))
        self.sess.run_with_iobinding(b)
        vals = [v.numpy() for v in b.get_outputs()[len(self.pairs):]]
        self.current ^= 1
        return vals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("reg")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=400, help="measured steps per variant")
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    a = ap.parse_args()
    d = np.load(a.data)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    nb = len(y) // a.batch
    batches = [(np.ascontiguousarray(x[i * a.batch:(i + 1) * a.batch]), y[i * a.batch:(i + 1) * a.batch])
               for i in range(nb)]
    steppers = {"baseline": Stepper(a.base, a.threads), "inverse-rate": Stepper(a.reg, a.threads)}
    cpu = {k: [] for k in steppers}
    wall = {k: [] for k in steppers}
    pos = {k: 0 for k in steppers}
    blocks = a.steps // a.block
    for r in range(blocks + 3):
        order = list(steppers) if r % 2 == 0 else list(reversed(steppers))
        for k in order:
            s = steppers[k]
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(a.block):
                bx, by = batches[pos[k] % nb]
                pos[k] += 1
                loss = s.step(bx, by, a.lr)[0]
            c1, w1 = time.thread_time(), time.perf_counter()
            assert np.isfinite(loss).all(), f"{k}: loss {loss}"
            if r >= 3:
                cpu[k].append(1000.0 * (c1 - c0) / a.block)
                wall[k].append(1000.0 * (w1 - w0) / a.block)
    ratio = lambda m: statistics.median(b / a for a, b in zip(m["baseline"], m["inverse-rate"]))
    print(json.dumps({
        "steps_per_variant": blocks * a.block,
        "cpu_ms": {k: statistics.median(v) for k, v in cpu.items()},
        "wall_ms": {k: statistics.median(v) for k, v in wall.items()},
        "cpu_pair_ratio": ratio(cpu),
        "wall_pair_ratio": ratio(wall),
        "outputs": {k: s.scalars for k, s in steppers.items()},
    }))


if __name__ == "__main__":
    main()
