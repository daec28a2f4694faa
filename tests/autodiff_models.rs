//! `regraft grad` on every committed model against PyTorch autograd (issue #3).
//!
//! Each `tests/fixtures/grad/<stem>.npz` (made by tests/fixtures/make_grad_fixtures.py)
//! holds a batch (`x`, `labels`; `targets` for mlp_mse), PyTorch's float64 `loss` and one
//! `grad:<initializer>` per trainable parameter. The gradient model regraft builds for
//! `models/<stem>.onnx` or `tests/data/models/<stem>.onnx` (mlp_mse: models/mlp.onnx
//! with `--loss mse`) runs in ONNX Runtime on the same batch; its loss and every
//! `<name>_grad` output must match within 1e-4 relative, it must pass the onnx checker's
//! full check and use no com.microsoft op.

mod common;
#[path = "common/gradcheck.rs"]
mod gradcheck;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use ort::value::{DynValue, Tensor};
use prost::Message;
use regraft::io::{External, load_model, save_model};
use regraft::proto::ModelProto;
use regraft::train::grad::{GradGraph, GradOptions, grad_graph};
use regraft::train::loss::LossKind;

// ---------------------------------------------------------------------------------------
// A minimal .npz reader: tools/regraft_npz.py writes STORED zips of version-1.0 .npy files.

#[derive(Clone, Debug)]
enum Npy {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
    Other(String),
}

impl Npy {
    fn f64(&self) -> ArrayD<f64> {
        match self {
            Npy::F32(a) => a.mapv(|v| v as f64),
            Npy::F64(a) => a.clone(),
            Npy::I64(a) => a.mapv(|v| v as f64),
            Npy::Other(d) => panic!("a {d} array is not numeric here"),
        }
    }
}

fn le_u16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn le_u32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

fn parse_npy(name: &str, b: &[u8]) -> Npy {
    assert!(b.starts_with(b"\x93NUMPY"), "{name}: not a .npy member");
    let (major, hlen, start) = match b[6] {
        1 => (1, le_u16(b, 8), 10),
        v => (v, le_u32(b, 8), 12),
    };
    let _ = major;
    let header = std::str::from_utf8(&b[start..start + hlen]).expect("an ASCII header");
    let field = |key: &str| -> &str {
        let i = header
            .find(&format!("'{key}'"))
            .unwrap_or_else(|| panic!("{name}: no {key} in {header}"));
        header[i + key.len() + 2..].trim_start_matches([':', ' '])
    };
    let descr = field("descr").trim_start_matches('\'');
    let descr = &descr[..descr.find('\'').unwrap()];
    assert!(
        field("fortran_order").starts_with("False"),
        "{name}: Fortran order"
    );
    let shape_s = field("shape");
    let shape_s = &shape_s[1..shape_s.find(')').unwrap()];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data = &b[start + hlen..];
    let n: usize = shape.iter().product();
    let arr = |w: usize| {
        assert_eq!(
            data.len(),
            n * w,
            "{name}: {} bytes for shape {shape:?}",
            data.len()
        );
        data.chunks_exact(w)
    };
    match descr {
        "<f4" => Npy::F32(
            ArrayD::from_shape_vec(
                IxDyn(&shape),
                arr(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
            .unwrap(),
        ),
        "<f8" => Npy::F64(
            ArrayD::from_shape_vec(
                IxDyn(&shape),
                arr(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
            .unwrap(),
        ),
        "<i8" => Npy::I64(
            ArrayD::from_shape_vec(
                IxDyn(&shape),
                arr(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
            .unwrap(),
        ),
        d => Npy::Other(d.to_string()),
    }
}

fn read_npz(path: &Path) -> BTreeMap<String, Npy> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    let mut at = 0;
    while at + 30 <= b.len() && b[at..at + 4] == [0x50, 0x4b, 0x03, 0x04] {
        let flags = le_u16(&b, at + 6);
        let method = le_u16(&b, at + 8);
        let size = le_u32(&b, at + 18);
        let name_len = le_u16(&b, at + 26);
        let extra_len = le_u16(&b, at + 28);
        let name = String::from_utf8_lossy(&b[at + 30..at + 30 + name_len]).into_owned();
        assert!(
            method == 0 && flags & 8 == 0,
            "{}: {name} is compressed or streamed; expected tools/regraft_npz.py's stored zip",
            path.display()
        );
        let data_at = at + 30 + name_len + extra_len;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.insert(key.clone(), parse_npy(&key, &b[data_at..data_at + size]));
        at = data_at + size;
    }
    assert!(!out.is_empty(), "{}: no .npy members", path.display());
    out
}

// ---------------------------------------------------------------------------------------
// Fixtures and models

struct Fixture {
    stem: String,
    npz: PathBuf,
    model: PathBuf,
    loss: LossKind,
}

fn fixtures() -> Vec<Fixture> {
    let dir = common::root().join("tests/fixtures/grad");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npz"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no gradient fixtures in {}", dir.display());
    v.into_iter()
        .map(|npz| {
            let stem = npz.file_stem().unwrap().to_string_lossy().into_owned();
            let (model_stem, loss) = match stem.strip_suffix("_mse") {
                Some(m) => (m.to_string(), LossKind::Mse),
                None => (stem.clone(), LossKind::CrossEntropy),
            };
            let model = ["models", "tests/data/models"]
                .iter()
                .map(|d| common::root().join(d).join(format!("{model_stem}.onnx")))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("fixture {stem}.npz: no models/{model_stem}.onnx or tests/data/models/{model_stem}.onnx"));
            Fixture { stem, npz, model, loss }
        })
        .collect()
}

fn opts(loss: LossKind, freeze: &[&str]) -> GradOptions {
    GradOptions {
        loss,
        freeze: freeze.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The gradient model's input names: (the model's input, the labels/targets).
fn input_names(gg: &GradGraph) -> (String, String) {
    let ins: Vec<String> = gg
        .graph
        .real_inputs()
        .map(|i| i.name().to_string())
        .filter(|n| *n != gg.head.labels)
        .collect();
    assert_eq!(ins.len(), 1, "one model input besides the labels: {ins:?}");
    (ins[0].clone(), gg.head.labels.clone())
}

/// Feeds for a batch: `x` as the fixture stores it (float32), labels int64 or targets float32.
fn feeds(
    x_name: &str,
    y_name: &str,
    x: &Npy,
    y: &Npy,
    rows: std::ops::Range<usize>,
) -> Vec<(String, DynValue)> {
    let sl = Slice::from(rows.start as isize..rows.end as isize);
    let xv = match x {
        Npy::F32(a) => Tensor::from_array(a.slice_axis(Axis(0), sl).to_owned())
            .unwrap()
            .into_dyn(),
        other => panic!("x is {other:?}, expected float32"),
    };
    let yv = match y {
        Npy::I64(a) => Tensor::from_array(a.slice_axis(Axis(0), sl).to_owned())
            .unwrap()
            .into_dyn(),
        Npy::F32(a) => Tensor::from_array(a.slice_axis(Axis(0), sl).to_owned())
            .unwrap()
            .into_dyn(),
        other => panic!("labels/targets are {other:?}"),
    };
    vec![(x_name.to_string(), xv), (y_name.to_string(), yv)]
}

/// max|got − want| ≤ 1e-4·max|want| + 1e-6, or a message.
fn compare(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>) -> Option<String> {
    if got.shape() != want.shape() {
        return Some(format!(
            "{what}: shape {:?}, PyTorch's {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let tol = 1e-4 * scale + 1e-6;
    let close = diff <= tol; // a NaN is not close
    (!close).then(|| {
        format!(
            "{what}: max |regraft − PyTorch| = {diff:.3e} > {tol:.3e} (max |PyTorch| = {scale:.3e})"
        )
    })
}

/// Run the gradient model on the fixture's whole batch and compare with PyTorch; the
/// mismatches, one a line.
fn check_against_fixture(
    gg: &GradGraph,
    model: &ModelProto,
    fx: &BTreeMap<String, Npy>,
) -> Vec<String> {
    let (xn, yn) = input_names(gg);
    let y = fx
        .get("targets")
        .or_else(|| fx.get("labels"))
        .expect("labels or targets");
    let n = fx["x"].f64().shape()[0];
    let mut s =
        gradcheck::new_session(&model.encode_to_vec()).expect("the gradient model loads in ORT");
    let out = gradcheck::run_outputs(&mut s, feeds(&xn, &yn, &fx["x"], y, 0..n))
        .expect("the gradient model runs");
    let mut bad = Vec::new();
    bad.extend(compare("loss", &out[&gg.head.loss], &fx["loss"].f64()));
    let want: BTreeSet<String> = fx
        .keys()
        .filter_map(|k| k.strip_prefix("grad:"))
        .map(str::to_string)
        .collect();
    let have: BTreeSet<String> = gg.grads.iter().map(|(p, _)| p.clone()).collect();
    for p in want.difference(&have) {
        bad.push(format!(
            "PyTorch has a gradient for '{p}', regraft's model has no {p}_grad output"
        ));
    }
    for p in have.difference(&want) {
        bad.push(format!(
            "regraft's model outputs {p}_grad, PyTorch has no gradient for '{p}'"
        ));
    }
    for (p, gname) in &gg.grads {
        assert_eq!(
            *gname,
            format!("{p}_grad"),
            "gradient outputs are named <param>_grad"
        );
        if let Some(w) = fx.get(&format!("grad:{p}")) {
            bad.extend(compare(gname, &out[gname], &w.f64()));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn gradients_equal_pytorch_autograd_for_every_model() {
    let all = fixtures();
    let dir = common::tempdir();
    let saved = std::sync::Mutex::new(Vec::new());
    common::for_each_parallel(
        &all,
        |f| f.stem.clone(),
        |f| {
            let model = load_model(&f.model).unwrap();
            let gg =
                grad_graph(model, &opts(f.loss, &[])).unwrap_or_else(|e| panic!("grad_graph: {e}"));
            let m = gg.graph.to_model();
            let ms = gradcheck::microsoft_ops(&m);
            assert!(ms.is_empty(), "the gradient model uses {}", ms.join(", "));
            let path = dir.path().join(format!("{}_grad.onnx", f.stem));
            save_model(&m, &path, &External::Auto).unwrap();
            saved.lock().unwrap().push(path);
            let fx = read_npz(&f.npz);
            let bad = check_against_fixture(&gg, &m, &fx);
            assert!(
                bad.is_empty(),
                "{} ({}):\n  {}",
                f.stem,
                common::label(&f.model),
                bad.join("\n  ")
            );
        },
    );
    let saved = saved.into_inner().unwrap();
    assert_eq!(saved.len(), all.len());
    if let Some(e) = gradcheck::checker_failures(&saved) {
        panic!("onnx checker (full check) on the gradient models:\n{e}");
    }
}

/// `regraft grad` through the CLI: the written model equals PyTorch's gradients,
/// `--freeze` removes the matching gradients (and leaves the others unchanged), and the
/// model runs for batch sizes 1, 7 and 16 (the mean loss's gradients over a batch split in
/// two add up, weighted by size, to the whole batch's).
#[test]
fn cli_grad_on_the_mlp() {
    let dir = common::tempdir();
    let full = dir.path().join("mlp_grad.onnx");
    let frozen = dir.path().join("mlp_grad_frozen.onnx");
    let out = common::regraft(&[
        "grad",
        "models/mlp.onnx",
        "--loss",
        "cross-entropy",
        "-o",
        full.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "regraft grad failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::regraft(&[
        "grad",
        "models/mlp.onnx",
        "--freeze",
        "fc1.*",
        "-o",
        frozen.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "regraft grad --freeze failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_checker_passes(&full);
    common::assert_checker_passes(&frozen);

    let fx = read_npz(&common::root().join("tests/fixtures/grad/mlp.npz"));
    let outputs = |p: &Path| -> Vec<String> {
        let m = load_model(p).unwrap();
        assert!(gradcheck::microsoft_ops(&m).is_empty());
        m.graph
            .unwrap()
            .output
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    };
    let all: BTreeSet<String> = [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    .iter()
    .map(|p| format!("{p}_grad"))
    .collect();
    let full_outs = outputs(&full);
    assert_eq!(full_outs[0], "loss");
    assert_eq!(full_outs[1..].iter().cloned().collect::<BTreeSet<_>>(), all);
    let frozen_outs = outputs(&frozen);
    let kept: BTreeSet<String> = all
        .iter()
        .filter(|g| !g.starts_with("fc1."))
        .cloned()
        .collect();
    assert_eq!(
        frozen_outs[1..].iter().cloned().collect::<BTreeSet<_>>(),
        kept,
        "--freeze 'fc1.*'"
    );

    let run = |p: &Path, rows: std::ops::Range<usize>| {
        let bytes = std::fs::read(p).unwrap();
        let mut s = gradcheck::new_session(&bytes).unwrap();
        gradcheck::run_outputs(&mut s, feeds("x", "labels", &fx["x"], &fx["labels"], rows)).unwrap()
    };
    // The whole batch: PyTorch's numbers, frozen or not.
    let g16 = run(&full, 0..16);
    let f16 = run(&frozen, 0..16);
    let mut bad = Vec::new();
    bad.extend(compare("loss", &g16["loss"], &fx["loss"].f64()));
    bad.extend(compare("loss (frozen)", &f16["loss"], &fx["loss"].f64()));
    for g in &all {
        let want = fx[&format!("grad:{}", g.strip_suffix("_grad").unwrap())].f64();
        bad.extend(compare(g, &g16[g], &want));
        if kept.contains(g) {
            bad.extend(compare(&format!("{g} (frozen)"), &f16[g], &want));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // Other batch sizes: 1 + 15 and 7 + 9 rows add up to the 16-row batch.
    for (k, n) in [(1usize, 16usize), (7, 16)] {
        let a = run(&full, 0..k);
        let b = run(&full, k..n);
        for (name, whole) in &g16 {
            assert_eq!(a[name].shape(), whole.shape(), "{name} for batch size {k}");
            assert!(
                a[name].iter().all(|v| v.is_finite()),
                "{name} for batch size {k} is not finite"
            );
            let mixed = (&a[name] * k as f64 + &b[name] * (n - k) as f64) / n as f64;
            if let Some(e) = compare(
                &format!("{name}: ({k}·batch[..{k}] + {}·batch[{k}..])/{n}", n - k),
                &mixed,
                whole,
            ) {
                panic!("{e}");
            }
        }
    }
}
