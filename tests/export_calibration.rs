//! Issue #7: "Temperature scaling never raises the validation NLL, since T = 1 is always
//! a candidate. On a model trained to overfit, it lowers NLL and ECE."
//!
//! The MLP (300k parameters) is trained on 100 digits for 40 epochs at a high learning
//! rate without weight decay: it fits them perfectly and is overconfident elsewhere.
//! Exported with and without `--calibrate temperature` (T fitted on digits_val), the
//! calibrated model must have T > 1 in its metadata, divide the logits by it, lower the
//! validation NLL to the recorded value, and lower NLL and ECE on the test set too.

mod common;
mod export_support;

use std::collections::HashMap;
use std::path::Path;

use export_support as s;
use regraft::export::temperature::{fit, nll_at};
use regraft::metrics::Metrics;

fn metadata(path: &Path) -> HashMap<String, String> {
    regraft::io::load_model(path)
        .unwrap()
        .metadata_props
        .iter()
        .map(|e| (e.key().to_string(), e.value().to_string()))
        .collect()
}

fn eval(model: &Path, data: &Path) -> Metrics {
    serde_json::from_str(&s::regraft_ok(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]))
    .unwrap()
}

/// Both outputs of a model on a dataset (tract-onnx): logits and probs.
fn outputs(model: &Path, ds: &regraft::runtime::data::Dataset) -> (Vec<f32>, Vec<f32>) {
    let bytes = std::fs::read(model).unwrap();
    let mut shape = vec![ds.len()];
    shape.extend(&ds.sample_shape);
    let mut o = regraft::runtime::tract::run(&bytes, &ds.x, &shape).unwrap();
    assert_eq!(o.len(), 2, "{}: logits and probs", model.display());
    let probs = o.pop().unwrap().1;
    (o.pop().unwrap().1, probs)
}

#[test]
fn temperature_scaling_calibrates_an_overfit_mlp() {
    let dir = common::tempdir();
    let small = dir.path().join("digits_100.npz");
    s::write_npz(&small, &s::head(&s::load("digits_train"), 100));
    let (val, test) = (s::data("digits_val"), s::data("digits_test"));
    let run = dir.path().join("run");
    s::train(
        &s::model("mlp"),
        &small,
        &[
            "--val",
            val.to_str().unwrap(),
            "--epochs",
            "40",
            "--lr",
            "0.2",
            "--weight-decay",
            "0",
            "--batch-size",
            "32",
        ],
        &run,
    );
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["train_accuracy"].as_f64(),
        Some(1.0),
        "the MLP did not overfit: {last}"
    );

    let (cal, raw) = (dir.path().join("cal.onnx"), dir.path().join("raw.onnx"));
    let r = run.to_str().unwrap();
    s::regraft_ok(&["export", r, "-o", cal.to_str().unwrap()]);
    s::regraft_ok(&[
        "export",
        r,
        "-o",
        raw.to_str().unwrap(),
        "--calibrate",
        "none",
    ]);

    // Metadata: T > 1 (the model is overconfident) and the validation NLL it bought.
    let meta = metadata(&cal);
    let t: f64 = meta["regraft.temperature"].parse().unwrap();
    let nll: serde_json::Value = serde_json::from_str(&meta["regraft.val_nll"]).unwrap();
    let (before, after) = (
        nll["before"].as_f64().unwrap(),
        nll["after"].as_f64().unwrap(),
    );
    eprintln!("T = {t:.4}, validation NLL {before:.4} -> {after:.4}");
    assert!(t > 1.2 && t < 20.0, "T = {t}");
    assert!(after < before - 0.05, "validation NLL {before} -> {after}");
    assert!(meta.contains_key("regraft.recipe"));
    let raw_meta = metadata(&raw);
    assert!(
        !raw_meta.contains_key("regraft.temperature") && !raw_meta.contains_key("regraft.val_nll")
    );

    // The calibrated logits are the raw ones over T, and both models' probs are the
    // softmax of their own logits.
    let ds = s::load("digits_test");
    let (zr, pr) = outputs(&raw, &ds);
    let (zc, pc) = outputs(&cal, &ds);
    for (z, p, what) in [(&zr, &pr, "raw"), (&zc, &pc, "calibrated")] {
        let sm = s::softmax(z, 10);
        let d = sm
            .iter()
            .zip(p.iter())
            .map(|(a, &b)| (a - b as f64).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-6, "{what}: probs differ from softmax(logits) by {d}");
    }
    for (a, b) in zr.iter().zip(&zc) {
        let want = *a as f64 / t;
        assert!(
            (*b as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "logit {b} vs {a} / {t}"
        );
    }

    // Validation: `regraft eval` reproduces the recorded NLLs, and calibration lowered it.
    let (vr, vc) = (eval(&raw, &val), eval(&cal, &val));
    assert!(
        (vr.nll - before).abs() < 1e-4,
        "eval {} vs recorded {before}",
        vr.nll
    );
    assert!(
        (vc.nll - after).abs() < 1e-4,
        "eval {} vs recorded {after}",
        vc.nll
    );
    assert!(vc.nll < vr.nll);

    // Test set: NLL and ECE fall, accuracy stays.
    let (tr, tc) = (eval(&raw, &test), eval(&cal, &test));
    eprintln!(
        "test NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}, Top-1 {:.4}",
        tr.nll, tc.nll, tr.ece, tc.ece, tr.top1
    );
    assert!(tc.nll < tr.nll - 0.05, "test NLL {} -> {}", tr.nll, tc.nll);
    assert!(tc.ece < 0.8 * tr.ece, "test ECE {} -> {}", tr.ece, tc.ece);
    assert_eq!(tc.top1, tr.top1);
}

/// A small deterministic generator (splitmix64), so the test needs no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `fit` on logits of every kind (overconfident, underconfident, calibrated, labels
/// unrelated to the logits, perfectly separated): the NLL it reports is the NLL at T
/// and at T = 1, it is never above the NLL at T = 1, and no temperature on a fine grid
/// over its search range [0.01, 100] does better.
#[test]
fn fitted_temperature_never_raises_the_nll() {
    let mut rng = Rng(7);
    let c = 10;
    // (logit scale, label temperature): labels ~ softmax(z / label_t); 0 = argmax,
    // infinity = uniform.
    let cases = [
        (5.0, 3.0),
        (5.0, 1.0),
        (1.0, 0.3),
        (3.0, f64::INFINITY),
        (3.0, 0.0),
        (0.0, 1.0),
        (40.0, 1.0),
    ];
    for (scale, label_t) in cases {
        let n = 400;
        let mut z = vec![0f32; n * c];
        let mut y = vec![0i64; n];
        for i in 0..n {
            let row = &mut z[i * c..(i + 1) * c];
            for v in row.iter_mut() {
                *v = (rng.normal() * scale) as f32;
            }
            y[i] = if label_t == 0.0 {
                (0..c).fold(0, |b, k| if row[k] > row[b] { k } else { b }) as i64
            } else {
                let w: Vec<f64> = row.iter().map(|&v| (v as f64 / label_t).exp()).collect();
                let total: f64 = w.iter().sum();
                let (mut u, mut k) = (rng.uniform() * total, 0);
                while k + 1 < c && u >= w[k] {
                    u -= w[k];
                    k += 1;
                }
                k as i64
            };
        }
        let (t, before, after) = fit(&z, c, &y);
        let what = format!("scale {scale}, label temperature {label_t}: T = {t}");
        assert!(t.is_finite() && t > 0.0, "{what}");
        assert_eq!(before, nll_at(&z, c, &y, 1.0), "{what}");
        assert!((after - nll_at(&z, c, &y, 1.0 / t)).abs() < 1e-12, "{what}");
        assert!(after <= before, "{what}: NLL {before} -> {after}");
        for k in 0..=400 {
            let beta = 10f64.powf(-2.0 + 4.0 * k as f64 / 400.0);
            let v = nll_at(&z, c, &y, beta);
            assert!(
                v >= after - 1e-7,
                "{what}: 1/T = {beta} gives {v} < {after}"
            );
        }
    }
}
