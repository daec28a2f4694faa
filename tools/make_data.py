#!/usr/bin/env python3
"""Make regraft's small committed datasets under tests/data/.

Run from the repository root (no network needed; deterministic, rerunning
rewrites byte-identical files):

    .venv-tools/bin/python tools/make_data.py

Pinned: scikit-learn==1.9.1 (digits ship inside the wheel), mnist1d (the
package's procedural generator make_dataset(get_dataset_args()); its
download helper is never called), numpy.

Writes (see tests/data/README.md for the columns):
  tests/data/digits.npz          all 1797 sklearn digits, original order
  tests/data/digits_train.npz    1200 \
  tests/data/digits_val.npz       297  } one permutation, numpy default_rng(0)
  tests/data/digits_test.npz      300 /
  tests/data/mnist1d_train.npz   4000 (mnist1d default args, seed 42)
  tests/data/mnist1d_test.npz    1000
Each file has x float32 and y int64 (the digits splits also have `index`,
int64 row numbers into digits.npz).
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from regraft_npz import save_npz  # noqa: E402

SPLIT_SEED = 0
SPLITS = (("train", 1200), ("val", 297), ("test", 300))


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    assert x.shape == (1797, 64) and x.min() == 0.0 and x.max() == 1.0
    return x, y


def mnist1d():
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # seed 42, 5000 samples, 80/20 split, length 40
    d = make_dataset(args)  # procedural; never mnist1d.data.get_dataset (downloads)
    out = {}
    for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
        x = np.asarray(d[xk], dtype=np.float32)
        y = np.asarray(d[yk], dtype=np.int64)
        assert x.ndim == 2 and x.shape[1] == 40 and len(x) == len(y)
        out[split] = (x, y)
    return out


def main():
    out = ROOT / "tests" / "data"
    out.mkdir(parents=True, exist_ok=True)

    x, y = digits()
    save_npz(out / "digits.npz", {"x": x, "y": y})
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x)).astype(np.int64)
    start = 0
    for name, n in SPLITS:
        idx = perm[start : start + n]
        start += n
        save_npz(out / f"digits_{name}.npz", {"x": x[idx], "y": y[idx], "index": idx})
        print(f"digits_{name}: {n} rows, class counts {np.bincount(y[idx], minlength=10).tolist()}")
    assert start == len(x)

    for split, (mx, my) in mnist1d().items():
        save_npz(out / f"mnist1d_{split}.npz", {"x": mx, "y": my})
        print(f"mnist1d_{split}: {mx.shape}, x in [{mx.min():.3f}, {mx.max():.3f}]")


if __name__ == "__main__":
    main()
