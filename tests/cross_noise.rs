//! Issue #6, item 4 and the CNN: cross-regularization with learned noise
//! (`--regularizer cross-noise`).
//!
//! - The learned σ of every noise site stays positive and finite, epoch by epoch
//!   (`noise.*.sigma` in metrics.jsonl), and actually moves.
//! - The weights never see validation data: with σ frozen (`--val-lr 0`), two runs with
//!   the same seed and different validation files (the real split, or 150 samples of
//!   random pixels and random labels) end with bit-identical weights, optimizer slots
//!   and BatchNormalization statistics. The noise of the training step is keyed by
//!   (seed, training step, site), so a validation step with a different number of draws
//!   must not shift it either.
//! - Structurally, for the noise and the norm variants: `train_step.onnx` reads the
//!   regularization parameters as plain inputs, computes no gradient for them and
//!   outputs no update of them, and has no input besides the batch, the step scalars,
//!   the state and one ε per noise site; `val_step.onnx` outputs only the validation loss and the regularization
//!   parameters' updates (with their Adam slots), never a weight.
//! - On the CNN (Conv + BatchNormalization) cross-noise trains and exports, both the
//!   deterministic and the `mc:8` predictive; export cross-checks ONNX Runtime against
//!   tract itself and fails on disagreement.
//! - The validation step's gradient for log σ matches finite differences, per layer and
//!   per channel (`--sigma-per-channel`), and the channels' gradients sum to the layer's.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use regraft::runtime::checkpoint;

fn regraft_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = common::regraft(args);
    assert!(
        out.status.success(),
        "regraft {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// `regraft train models/mlp.onnx` on the digits training split with cross-noise.
fn train_mlp(run: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        os("train"),
        os("models/mlp.onnx"),
        os("--data"),
        os("tests/data/digits_train.npz"),
        os("--regularizer"),
        os("cross-noise"),
        os("--threads"),
        os("1"),
        os("--quiet"),
        os("-o"),
        run.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    regraft_ok(&args);
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn learned_sigma_stays_positive_and_finite_every_epoch() {
    let dir = common::tempdir();
    let run = dir.path().join("run");
    // The default validation split (10 % of --data), a validation step every 5 steps.
    train_mlp(
        &run,
        &[
            "--epochs",
            "5",
            "--every",
            "5",
            "--val-lr",
            "0.05",
            "--init-sigma",
            "0.5",
        ],
    );
    let logs = metrics(&run);
    assert_eq!(logs.len(), 5);
    let mut last = vec![];
    for l in &logs {
        let sig: Vec<(String, f64)> = l["diagnostics"]
            .as_object()
            .expect("diagnostics")
            .iter()
            .filter(|(k, _)| k.starts_with("noise.") && k.ends_with(".sigma"))
            .map(|(k, v)| (k.clone(), v.as_f64().expect("a number")))
            .collect();
        assert_eq!(sig.len(), 2, "one σ per hidden Gemm of the MLP: {l}");
        for (k, s) in &sig {
            assert!(s.is_finite() && *s > 0.0, "epoch {}: {k} = {s}", l["epoch"]);
        }
        last = sig;
    }
    assert!(
        last.iter().any(|(_, s)| (s / 0.5 - 1.0).abs() > 1e-3),
        "σ did not move from its initial 0.5: {last:?}"
    );
    // The checkpoint holds log σ, consistent with the logged σ.
    let ck = checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    for (k, s) in &last {
        let name = format!("{}.log_sigma", k.trim_end_matches(".sigma"));
        let (_, v) = &ck.tensors[&name];
        assert!(((v[0] as f64).exp() / s - 1.0).abs() < 1e-6, "{name}");
    }
}

/// 150 samples of random pixels with random labels, in the digits format.
fn garbage_val(path: &Path) {
    let script = "import sys, numpy as np\n\
         sys.path.insert(0, 'tools')\n\
         from regraft_npz import save_npz\n\
         r = np.random.default_rng(123)\n\
         save_npz(sys.argv[1], {'x': r.random((150, 64), dtype=np.float32), \
         'y': r.integers(0, 10, 150).astype(np.int64)})\n";
    common::run_ok(
        Command::new(common::python())
            .current_dir(common::root())
            .arg("-c")
            .arg(script)
            .arg(path),
    );
}

#[test]
fn weights_never_see_validation_data() {
    let dir = common::tempdir();
    let garbage = dir.path().join("garbage_val.npz");
    garbage_val(&garbage);
    let real = common::root().join("tests/data/digits_val.npz");
    let runs: Vec<PathBuf> = ["real", "garbage"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    std::thread::scope(|s| {
        for (run, val) in runs.iter().zip([&real, &garbage]) {
            s.spawn(move || {
                train_mlp(
                    run,
                    &[
                        "--epochs",
                        "3",
                        "--every",
                        "2",
                        "--val-lr",
                        "0",
                        "--init-sigma",
                        "0.3",
                        "--val",
                        val.to_str().unwrap(),
                    ],
                )
            });
        }
    });
    // The validation files really differ, and were used.
    let (la, lb) = (metrics(&runs[0]), metrics(&runs[1]));
    assert_ne!(la[2]["val_loss"], lb[2]["val_loss"]);
    let a = checkpoint::load(&runs[0].join("checkpoint.safetensors")).unwrap();
    let b = checkpoint::load(&runs[1].join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    let mut compared = 0;
    for (name, (shape, va)) in &a.tensors {
        if name.starts_with("noise.") {
            continue; // the validation step's own state
        }
        let (shape_b, vb) = &b.tensors[name];
        assert_eq!(shape, shape_b, "{name}");
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "'{name}' differs between runs that differ only in their validation data"
        );
        compared += 1;
    }
    assert_eq!(compared, 12, "6 parameters and 6 momentum slots");
    // With --val-lr 0 σ stayed at its initial value.
    let s0 = (0.3f64).ln() as f32;
    for (name, (_, v)) in a.tensors.iter().chain(&b.tensors) {
        if name.ends_with(".log_sigma") {
            assert_eq!(v[0].to_bits(), s0.to_bits(), "{name}");
        }
    }
    // And the weights did train.
    let init = checkpoint::load(&runs[0].join("state.safetensors")).unwrap();
    assert_ne!(init.tensors["fc1.weight"].1, a.tensors["fc1.weight"].1);
}

/// Real inputs (not initializers) and outputs of an ONNX file, and its node outputs.
fn io_of(path: &Path) -> (BTreeSet<String>, Vec<String>, BTreeSet<String>) {
    let m = regraft::io::load_model(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = m.graph.as_ref().expect("a graph");
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let inputs = g
        .input
        .iter()
        .map(|i| i.name().to_string())
        .filter(|n| !inits.contains(n.as_str()))
        .collect();
    let outputs = g.output.iter().map(|o| o.name().to_string()).collect();
    let values = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    (inputs, outputs, values)
}

fn check_artifacts(dir: &Path, is_reg: &dyn Fn(&str) -> bool, what: &str) {
    let state = checkpoint::load(&dir.join("state.safetensors")).unwrap();
    let names: BTreeSet<String> = state.tensors.keys().cloned().collect();
    // Regularization parameters (log σ or ρ) and their Adam slots.
    let reg: BTreeSet<&String> = names.iter().filter(|n| is_reg(n)).collect();
    let reg_params: BTreeSet<&String> = reg
        .iter()
        .copied()
        .filter(|n| !n.ends_with(".exp_avg") && !n.ends_with(".exp_avg_sq"))
        .collect();
    assert!(
        !reg_params.is_empty(),
        "{what}: no regularization parameter"
    );
    assert_eq!(reg.len(), 3 * reg_params.len(), "{what}: Adam slots");

    // train_step.onnx
    let (inputs, outputs, values) = io_of(&dir.join("train_step.onnx"));
    // Besides the state: the batch, the step scalars and, per noise site, its ε (drawn by
    // the trainer from a generator keyed by seed, training step and site).
    let eps: BTreeSet<String> = reg_params
        .iter()
        .filter_map(|p| p.strip_suffix(".log_sigma"))
        .map(|s| format!("{s}.eps"))
        .collect();
    let extra: BTreeSet<&String> = inputs.iter().filter(|i| !names.contains(*i)).collect();
    let expected: BTreeSet<String> = ["x", "labels", "lr", "step"]
        .iter()
        .map(|s| s.to_string())
        .chain(eps.iter().cloned())
        .collect();
    assert_eq!(
        extra,
        expected.iter().collect(),
        "{what}: train_step.onnx inputs besides the state"
    );
    for p in &reg_params {
        assert!(inputs.contains(*p), "{what}: train_step.onnx must read {p}");
    }
    for i in &inputs {
        assert!(
            !is_reg(i) || reg_params.contains(i) || eps.contains(i),
            "{what}: train_step.onnx reads the validation optimizer's slot {i}"
        );
    }
    for o in &outputs {
        assert!(
            !is_reg(o),
            "{what}: train_step.onnx outputs {o}, an update of a regularization parameter"
        );
    }
    for p in &reg_params {
        let grad = format!("{p}_grad");
        assert!(
            !values.contains(&grad),
            "{what}: train_step.onnx computes {grad}"
        );
    }

    // val_step.onnx
    let (vin, vout, _) = io_of(&dir.join("val_step.onnx"));
    assert_eq!(vout[0], "val_loss", "{what}");
    let updated: BTreeSet<String> = vout[1..]
        .iter()
        .map(|o| {
            o.strip_suffix("_new")
                .unwrap_or_else(|| panic!("{what}: val_step.onnx output {o}"))
                .to_string()
        })
        .collect();
    assert_eq!(
        updated,
        reg.iter().map(|s| s.to_string()).collect(),
        "{what}: val_step.onnx must update exactly the regularization parameters and their slots"
    );
    assert!(vin.contains("val_lr") && vin.contains("val_step"), "{what}");
}

#[test]
fn train_step_has_no_validation_input_and_val_step_updates_only_regularization() {
    let dir = common::tempdir();
    type IsReg<'a> = &'a dyn Fn(&str) -> bool;
    let cases: [(&str, &str, IsReg); 3] = [
        ("models/mlp.onnx", "cross-noise", &|n: &str| {
            n.starts_with("noise.")
        }),
        ("models/cnn.onnx", "cross-noise", &|n: &str| {
            n.starts_with("noise.")
        }),
        ("models/mlp.onnx", "cross-norm", &|n: &str| {
            n.starts_with("norm.")
        }),
    ];
    for (i, (model, reg, is_reg)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("a{i}"));
        regraft_ok(&[
            os("rewrite"),
            os(model),
            os("--regularizer"),
            os(reg),
            os("-o"),
            out.as_os_str(),
        ]);
        check_artifacts(&out, *is_reg, &format!("{model} {reg}"));
    }
}

#[test]
fn cross_noise_cnn_trains_and_exports_deterministic_and_mc() {
    cnn_trains_and_exports(false);
}

/// With `--sigma-per-channel` every noise site at a BatchNormalization output [N, C, H, W]
/// gets a log σ of shape [C, 1, 1]; the metrics log its mean with its range.
#[test]
fn per_channel_cross_noise_cnn_trains_and_exports_deterministic_and_mc() {
    cnn_trains_and_exports(true);
}

fn cnn_trains_and_exports(per_channel: bool) {
    let dir = common::tempdir();
    let run = dir.path().join("cnn");
    let mut args = vec![
        os("train"),
        os("models/cnn.onnx"),
        os("--data"),
        os("tests/data/digits_train.npz"),
        os("--regularizer"),
        os("cross-noise"),
        os("--epochs"),
        os("2"),
        os("--threads"),
        os("1"),
        os("--quiet"),
        os("-o"),
        run.as_os_str(),
    ];
    if per_channel {
        args.push(os("--sigma-per-channel"));
    }
    regraft_ok(&args);
    let ck = checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    let shapes: Vec<Vec<usize>> = ck
        .tensors
        .iter()
        .filter(|(k, _)| k.ends_with(".log_sigma"))
        .map(|(_, (shape, _))| shape.clone())
        .collect();
    assert_eq!(
        shapes.len(),
        3,
        "three BatchNormalization outputs feed a ReLU"
    );
    for shape in &shapes {
        if per_channel {
            assert!(
                shape.len() == 3 && shape[0] >= 16 && shape[1..] == [1, 1],
                "{shape:?}"
            );
        } else {
            assert!(shape.is_empty(), "{shape:?}");
        }
    }
    let logs = metrics(&run);
    if per_channel {
        for (k, v) in logs[1]["diagnostics"].as_object().unwrap() {
            if let Some(base) = k.strip_suffix(".sigma") {
                let d = &logs[1]["diagnostics"];
                let (lo, hi) = (
                    d[format!("{base}.sigma_min")].as_f64().unwrap(),
                    d[format!("{base}.sigma_max")].as_f64().unwrap(),
                );
                let mean = v.as_f64().unwrap();
                assert!(
                    0.0 < lo && lo <= mean && mean <= hi && hi.is_finite(),
                    "{k}"
                );
                assert!(lo < hi, "{k}: the channels' σ did not move apart");
            }
        }
    }
    let sig: Vec<f64> = logs[1]["diagnostics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(".sigma"))
        .map(|(_, v)| v.as_f64().unwrap())
        .collect();
    assert!(
        !sig.is_empty(),
        "noise sites at the BatchNormalization outputs"
    );
    assert!(sig.iter().all(|s| s.is_finite() && *s > 0.0), "{sig:?}");
    for (pred, file) in [("deterministic", "det.onnx"), ("mc:8", "mc8.onnx")] {
        let m = dir.path().join(file);
        // export verifies ONNX Runtime against tract and fails if they disagree.
        regraft_ok(&[
            os("export"),
            run.as_os_str(),
            os("--predictive"),
            os(pred),
            os("-o"),
            m.as_os_str(),
        ]);
        let js = regraft_ok(&[
            os("eval"),
            m.as_os_str(),
            os("--data"),
            os("tests/data/digits_test.npz"),
            os("--json"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&js).expect("eval --json");
        assert_eq!(v["n"], 300, "{pred}");
        let nll = v["nll"].as_f64().unwrap();
        assert!(nll.is_finite() && nll > 0.0, "{pred}: NLL {nll}");
        let top1 = v["top1"].as_f64().unwrap();
        assert!(top1 > 0.1, "{pred}: top-1 {top1} is not better than chance");
    }
}

/// The noise is keyed by (seed, step, site) and the validation steps' count and cursor
/// follow from the training step, so a cross-noise run stopped after 2 epochs and
/// resumed ends bit-identical to an uninterrupted 3-epoch run (σ and its Adam slots too).
#[test]
fn cross_noise_resume_is_bit_exact() {
    let dir = common::tempdir();
    let (full, split) = (dir.path().join("full"), dir.path().join("split"));
    let flags = ["--every", "5", "--val-lr", "0.05", "--init-sigma", "0.3"];
    std::thread::scope(|s| {
        s.spawn(|| train_mlp(&full, &[&["--epochs", "3"][..], &flags].concat()));
        s.spawn(|| {
            train_mlp(&split, &[&["--epochs", "2"][..], &flags].concat());
            train_mlp(
                &split,
                &[&["--epochs", "3", "--resume"][..], &flags].concat(),
            );
        });
    });
    let a = checkpoint::load(&full.join("checkpoint.safetensors")).unwrap();
    let b = checkpoint::load(&split.join("checkpoint.safetensors")).unwrap();
    assert_eq!(a.position, b.position);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, (_, va)) in &a.tensors {
        let vb = &b.tensors[name].1;
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "'{name}' differs after a resume"
        );
    }
    let s0 = (0.3f32).ln();
    assert!(
        a.tensors
            .iter()
            .any(|(n, (_, v))| n.ends_with(".log_sigma") && v[0] != s0),
        "σ was learned"
    );
}

/// The validation step's gradient for log σ (read back from Adam's first moment after one
/// step from zero slots: m = (1 − β1)·g) equals central finite differences of its own
/// validation loss, with the ε inputs held fixed; and both stay finite under huge noise.
#[test]
fn val_step_gradient_matches_finite_differences() {
    check_val_gradient(false, false);
}

/// With `--val-optimizer sgd` the validation step is the paper's plain gradient step,
/// log σ ← log σ − val_lr·∇: at val_lr = 1 its update is minus the gradient, which matches
/// finite differences, and the Adam run's gradient (same weights, σ frozen in training).
/// The graph has no optimizer state.
#[test]
fn sgd_val_step_is_a_plain_gradient_step() {
    let sgd = check_val_gradient(false, true);
    let adam = check_val_gradient(false, false);
    for (a, b) in sgd.iter().zip(&adam) {
        assert!(
            (a[0] - b[0]).abs() <= 1e-4 * b[0].abs(),
            "sgd {a:?} vs adam {b:?}"
        );
    }
}

/// The same with one σ per channel (`--sigma-per-channel`, 512 per hidden layer): each
/// log σ is a [512] vector, and the three channels of each layer with the largest
/// analytic gradient are checked one by one against finite differences. With every
/// channel at the same σ the two runs train identical weights (same seed, σ frozen), and
/// by the chain rule a layer's gradient is the sum of its channels' gradients.
#[test]
fn per_channel_val_step_gradient_matches_finite_differences() {
    let channels = check_val_gradient(true, false);
    let layers = check_val_gradient(false, false);
    for (c, l) in channels.iter().zip(&layers) {
        let sum: f64 = c.iter().sum();
        assert!(
            (sum - l[0]).abs() <= 1e-3 * l[0].abs() + 1e-5,
            "Σ of the channels' gradients {sum} vs the layer's {}",
            l[0]
        );
    }
}

/// Checks the validation step's log σ gradients against finite differences; returns
/// them (per parameter, every value). The gradient is read from Adam's first moment, or
/// with `sgd` from the update at val_lr = 1.
fn check_val_gradient(per_channel: bool, sgd: bool) -> Vec<Vec<f64>> {
    use ort::value::{DynValue, Tensor};
    use regraft::runtime::data::{Labels, load_npz};
    use regraft::runtime::{SessionOptions, session};

    let dir = common::tempdir();
    let run = dir.path().join("run");
    let mut flags = vec!["--epochs", "2", "--val-lr", "0", "--init-sigma", "0.5"];
    if per_channel {
        flags.push("--sigma-per-channel");
    }
    if sgd {
        flags.extend(["--val-optimizer", "sgd"]);
    }
    train_mlp(&run, &flags);
    let ck = checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    let bytes = std::fs::read(run.join("val_step.onnx")).unwrap();
    let mut s = session(
        &bytes,
        &SessionOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let val = load_npz(&common::root().join("tests/data/digits_val.npz"), false).unwrap();
    let n = 16;
    let (x, xshape, y) = val.batch(&(0..n).collect::<Vec<_>>());
    let Labels::Classes(y) = y else { panic!() };
    let inputs: Vec<(String, Vec<i64>)> = s
        .inputs()
        .iter()
        .map(|i| {
            let dims = match i.dtype() {
                ort::value::ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                _ => vec![],
            };
            (i.name().to_string(), dims)
        })
        .collect();
    let scalar = |v: f32| -> DynValue {
        Tensor::from_array((Vec::<usize>::new(), vec![v]))
            .unwrap()
            .into_dyn()
    };
    let like = |name: &str, v: Vec<f32>| -> DynValue {
        Tensor::from_array((ck.tensors[name].0.clone(), v))
            .unwrap()
            .into_dyn()
    };
    let feeds = |log_sigma: &dyn Fn(&str) -> Option<Vec<f32>>| -> Vec<(String, DynValue)> {
        inputs
            .iter()
            .enumerate()
            .map(|(k, (name, dims))| {
                let v: DynValue = match name.as_str() {
                    "x" => Tensor::from_array((xshape.clone(), x.clone()))
                        .unwrap()
                        .into_dyn(),
                    "labels" => Tensor::from_array((vec![n], y.clone())).unwrap().into_dyn(),
                    "val_lr" => scalar(if sgd { 1.0 } else { 0.0 }),
                    "val_step" => scalar(1.0),
                    e if e.ends_with(".eps") => {
                        let shape: Vec<usize> = dims
                            .iter()
                            .map(|&d| if d < 0 { n } else { d as usize })
                            .collect();
                        let mut data = vec![0f32; shape.iter().product()];
                        regraft::regularizers::noise::fill_normal(&mut data, &[9, k as u64]);
                        Tensor::from_array((shape, data)).unwrap().into_dyn()
                    }
                    p => match log_sigma(p) {
                        Some(v) => like(p, v),
                        None if p.ends_with(".exp_avg") || p.ends_with(".exp_avg_sq") => {
                            let base = p.rsplit_once(".exp_avg").unwrap().0;
                            like(base, vec![0.0; ck.tensors[base].1.len()])
                        }
                        None => {
                            let (shape, data) = &ck.tensors[p];
                            Tensor::from_array((shape.clone(), data.clone()))
                                .unwrap()
                                .into_dyn()
                        }
                    },
                };
                (name.clone(), v)
            })
            .collect()
    };
    let params: Vec<String> = ck
        .tensors
        .keys()
        .filter(|k| k.ends_with(".log_sigma"))
        .cloned()
        .collect();
    assert_eq!(params.len(), 2);
    let width = if per_channel { 512 } else { 1 };
    for p in &params {
        assert_eq!(ck.tensors[p].1.len(), width, "{p}: values of log σ");
    }
    let base = |p: &str| ck.tensors[p].1.clone();
    let outs = s
        .run(feeds(&|p| params.contains(&p.to_string()).then(|| base(p))))
        .unwrap();
    let loss =
        |o: &ort::session::SessionOutputs| o["val_loss"].try_extract_tensor::<f32>().unwrap().1[0];
    let l0 = loss(&outs);
    // Per parameter, the analytic gradient of every value of log σ.
    let grads: Vec<Vec<f64>> = params
        .iter()
        .map(|p| {
            let read = |out: &str| outs[out].try_extract_tensor::<f32>().unwrap().1.to_vec();
            let m: Vec<f64> = if sgd {
                let new = read(&format!("{p}_new"));
                base(p)
                    .iter()
                    .zip(&new)
                    .map(|(&b, &n)| (b - n) as f64)
                    .collect()
            } else {
                let m = read(&format!("{p}.exp_avg_new"));
                m.iter().map(|&m| m as f64 / 0.1).collect()
            };
            assert_eq!(m.len(), width, "{p}: gradient values");
            m
        })
        .collect();
    drop(outs);
    let has_slots = inputs.iter().any(|(name, _)| name.contains(".exp_avg"));
    assert_eq!(
        has_slots, !sgd,
        "Adam's slots are inputs of the Adam step only"
    );
    // A per-channel σ moves the loss far less than a layer's σ: a smaller absolute floor.
    let (h, floor) = (1e-2f32, if per_channel { 2e-5 } else { 2e-4 });
    for (p, g) in params.iter().zip(&grads) {
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &j in order.iter().take(3) {
            let mut at = |d: f32| -> f64 {
                let o = s
                    .run(feeds(&|q| {
                        params.contains(&q.to_string()).then(|| {
                            let mut v = base(q);
                            if q == p {
                                v[j] += d;
                            }
                            v
                        })
                    }))
                    .unwrap();
                loss(&o) as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            let gj = g[j];
            eprintln!("{p}[{j}]: loss {l0:.5}, analytic {gj:.6}, finite differences {fd:.6}");
            assert!(
                (gj - fd).abs() <= 0.05 * gj.abs().max(fd.abs()) + floor,
                "{p}[{j}]: analytic {gj}, finite differences {fd}"
            );
        }
    }
    // With very large noise the averaged probability of the right class, and of most
    // classes, underflows to 0 in float32; the head works in log space, so the loss and
    // the gradient stay finite (log 0 · 0 once made them NaN).
    let big = 300f32.ln();
    let o = s
        .run(feeds(&|p| {
            params.contains(&p.to_string()).then(|| vec![big; width])
        }))
        .unwrap();
    let l = loss(&o);
    assert!(l.is_finite() && l > 10.0, "validation loss at σ = 300: {l}");
    for p in &params {
        let out = if sgd {
            format!("{p}_new")
        } else {
            format!("{p}.exp_avg_new")
        };
        let m = o[out.as_str()]
            .try_extract_tensor::<f32>()
            .unwrap()
            .1
            .to_vec();
        assert!(m.iter().all(|m| m.is_finite()), "{out} at σ = 300");
    }
    grads
}
