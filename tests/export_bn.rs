//! Issue #7: "A model trained with BatchNorm exports with its running statistics, and ORT
//! and tract outputs agree." The CNN (six BatchNormalization nodes) is trained briefly;
//! its export must hold the checkpoint's running mean and variance (not the model's
//! initial ones), run BatchNormalization in inference mode, reproduce the trainer's own
//! validation accuracy, and give the same outputs on ONNX Runtime and tract-onnx.

mod common;
mod export_support;

use std::collections::HashMap;

use export_support as s;
use regraft::io::load_model;
use regraft::metrics::Metrics;
use regraft::proto::{ModelProto, tensor_values};
use regraft::runtime::{SessionOptions, checkpoint, predict, session};

fn initializers(m: &ModelProto) -> HashMap<String, Vec<f32>> {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_type() == 1)
        .map(|t| (t.name().to_string(), tensor_values::<f32>(t).unwrap()))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batchnorm_exports_running_statistics_and_runtimes_agree() {
    let dir = common::tempdir();
    let run = dir.path().join("run");
    let val = s::data("digits_val");
    s::train(
        &s::model("cnn"),
        &s::data("digits_train"),
        &["--val", val.to_str().unwrap(), "--epochs", "2"],
        &run,
    );
    let out = dir.path().join("cnn.onnx");
    s::regraft_ok(&["export", run.to_str().unwrap(), "-o", out.to_str().unwrap()]);

    let exported = load_model(&out).unwrap();
    let initial = initializers(&load_model(s::model("cnn")).unwrap());
    let ck = checkpoint::load(&run.join("checkpoint.safetensors"))
        .unwrap()
        .tensors;
    let inits = initializers(&exported);

    // Inference mode: no training_mode = 1, only the normalized output.
    let g = exported.graph.as_ref().unwrap();
    let bns: Vec<_> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .collect();
    assert_eq!(bns.len(), 6, "the CNN has six BatchNormalization nodes");
    for n in &bns {
        assert!(
            n.attribute
                .iter()
                .all(|a| a.name() != "training_mode" || a.i() == 0),
            "{}: still in training mode",
            n.name()
        );
        assert_eq!(n.output.len(), 1, "{}: outputs {:?}", n.name(), n.output);
        assert_eq!(n.input.len(), 5);
        // Scale, bias, running mean and variance are the checkpoint's, bit for bit; the
        // statistics moved during training (else this would not test anything).
        for (k, name) in n.input.iter().enumerate().skip(1) {
            let got = &inits[name.as_str()];
            let (_, want) = ck
                .get(name.as_str())
                .unwrap_or_else(|| panic!("the checkpoint has no '{name}'"));
            assert_eq!(got, want, "{name} differs from the checkpoint");
            if k >= 3 {
                let moved = max_diff(got, &initial[name.as_str()]);
                assert!(
                    moved > 1e-3,
                    "{name} never left its initial value ({moved})"
                );
            }
        }
    }
    // Every exported parameter or buffer is the checkpoint's.
    for (name, v) in &inits {
        if let Some((_, want)) = ck.get(name) {
            assert_eq!(v, want, "{name}");
        }
    }

    // The deterministic model of the run (T = 1) reproduces the trainer's own last
    // validation accuracy and loss (eval.onnx with BatchNorm in inference mode).
    let last = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    let ev: Metrics = serde_json::from_str(&s::regraft_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--data",
        val.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let (acc, loss) = (
        last["val_accuracy"].as_f64().unwrap(),
        last["val_loss"].as_f64().unwrap(),
    );
    assert!(
        (ev.top1 - acc).abs() < 1e-9,
        "eval Top-1 {} vs trainer {acc}",
        ev.top1
    );
    assert!(
        (ev.nll - loss).abs() < 1e-4,
        "eval NLL {} vs trainer {loss}",
        ev.nll
    );

    // ONNX Runtime and tract on the test set.
    let test = s::load("digits_test");
    let bytes = std::fs::read(&out).unwrap();
    let mut sess = session(&bytes, &SessionOptions::default()).unwrap();
    let (ort_logits, c) = predict(&mut sess, &test, 512, Some("logits")).unwrap();
    let (ort_probs, _) = predict(&mut sess, &test, 512, Some("probs")).unwrap();
    assert_eq!(c, 10);
    let mut shape = vec![test.len()];
    shape.extend(&test.sample_shape);
    let tr = regraft::runtime::tract::run(&bytes, &test.x, &shape).unwrap();
    assert_eq!(tr.len(), 2, "outputs logits and probs");
    assert_eq!(tr[0].0, vec![test.len(), 10]);
    // Logits to 1e-5 relative to their size (|logit| reaches ~20 here, where float32
    // rounding alone is ~1e-6; the exporter's own cross-check uses the same measure),
    // probabilities to 1e-5 absolute.
    let dl = ort_logits
        .iter()
        .zip(&tr[0].1)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f32::max);
    let dp = max_diff(&ort_probs, &tr[1].1);
    let big = ort_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "ORT vs tract on {} samples: logits {dl:e} relative (max |logit| {big}), probs {dp:e}",
        test.len()
    );
    assert!(dl <= 1e-5, "logits differ by {dl} relative");
    assert!(dp <= 1e-5, "probs differ by {dp}");
}
