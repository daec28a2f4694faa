//! Helpers shared by tests/export_*.rs and tests/eval_*.rs: short training runs, small
//! datasets written from Rust, and the shape of a clean command-line error.

#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::Output;

use npyz::WriterBuilder;
use regraft::runtime::data::{Dataset, Labels, load_npz};

use super::common;

/// A committed dataset, e.g. `data("digits_test")`.
pub fn data(name: &str) -> PathBuf {
    common::root().join(format!("tests/data/{name}.npz"))
}

/// A committed model, e.g. `model("cnn")`.
pub fn model(name: &str) -> PathBuf {
    common::root().join(format!("models/{name}.onnx"))
}

/// stdout and stderr of a command, for messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `regraft ARGS`, which must succeed; returns stdout.
pub fn regraft_ok(args: &[&str]) -> String {
    let out = common::regraft(args);
    assert!(
        out.status.success(),
        "regraft {} failed: {}",
        args.join(" "),
        show(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `regraft train MODEL --data DATA EXTRA... --quiet -o OUT`.
pub fn train(model: &Path, data: &Path, extra: &[&str], out: &Path) {
    let mut args = vec![
        "train",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--quiet",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    regraft_ok(&args);
    assert!(out.join("checkpoint.safetensors").is_file());
}

/// The first `n` samples of a dataset.
pub fn head(ds: &Dataset, n: usize) -> Dataset {
    ds.subset(&(0..n).collect::<Vec<_>>())
}

/// Write a dataset as .npz: x float32 [N, ...], y int64 [N].
pub fn write_npz(path: &Path, ds: &Dataset) {
    let Labels::Classes(y) = &ds.y else {
        panic!("class labels only")
    };
    let mut w = npyz::npz::NpzWriter::create(path).unwrap();
    let mut shape = vec![y.len() as u64];
    shape.extend(ds.sample_shape.iter().map(|&d| d as u64));
    let mut a = w
        .array::<f32>("x", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&shape)
        .begin_nd()
        .unwrap();
    a.extend(ds.x.iter().copied()).unwrap();
    a.finish().unwrap();
    let mut b = w
        .array::<i64>("y", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[y.len() as u64])
        .begin_nd()
        .unwrap();
    b.extend(y.iter().copied()).unwrap();
    b.finish().unwrap();
}

/// A committed dataset, loaded.
pub fn load(name: &str) -> Dataset {
    load_npz(&data(name), false).unwrap()
}

/// The command failed cleanly: exit status 1, no panic, nothing on stdout, and stderr
/// is one line `error: ...` holding every one of `needles`.
pub fn assert_clean_error(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {}", show(out));
    assert!(!err.contains("panicked"), "panicked: {}", show(out));
    assert!(out.stdout.is_empty(), "wrote to stdout: {}", show(out));
    assert!(
        err.starts_with("error: ") && !err.contains('\n'),
        "stderr is not one line 'error: ...': {}",
        show(out)
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks '{n}': {err}");
    }
    err
}

/// Softmax of each row of float32 logits, in f64.
pub fn softmax(z: &[f32], c: usize) -> Vec<f64> {
    regraft::metrics::softmax(z, c)
}
