//! One and two steps of `train_step.onnx` against PyTorch's optimizers (fixtures made by
//! tests/fixtures/make_step_fixtures.py): same initial weights, batches and
//! hyperparameters.

use std::path::Path;

use regraft::io::load_model;
use regraft::runtime::data::Labels;
use regraft::runtime::trainer::{Spec, Trainer};
use regraft::runtime::{SessionOptions, checkpoint::TensorMap};
use regraft::train::artifacts::build;
use regraft::train::optim::OptimizerKind;
use regraft::train::recipe::Recipe;

fn read_f32(
    ar: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    k: &str,
) -> (Vec<usize>, Vec<f32>) {
    let f = ar
        .by_name(k)
        .unwrap()
        .unwrap_or_else(|| panic!("fixture lacks {k}"));
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<f32>().unwrap())
}
fn read_f64(ar: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>, k: &str) -> f64 {
    ar.by_name(k).unwrap().unwrap().into_vec::<f64>().unwrap()[0]
}
fn read_i64(
    ar: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    k: &str,
) -> Vec<i64> {
    ar.by_name(k).unwrap().unwrap().into_vec::<i64>().unwrap()
}

fn check(fixture: &str, kind: OptimizerKind) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/step")
        .join(fixture);
    let mut ar = npyz::npz::NpzArchive::open(&path).unwrap();
    let mut recipe = Recipe::default();
    recipe.optimizer.kind = kind;
    let lr = read_f64(&mut ar, "lr") as f32;
    recipe.lr = lr;
    match kind {
        OptimizerKind::Sgd => {
            recipe.optimizer.momentum = read_f64(&mut ar, "momentum") as f32;
            recipe.optimizer.nesterov = read_f64(&mut ar, "nesterov") != 0.0;
            recipe.optimizer.weight_decay = read_f64(&mut ar, "weight_decay") as f32;
            assert_eq!(
                read_f64(&mut ar, "weight_decay_coupled"),
                1.0,
                "torch SGD's decay is coupled"
            );
            recipe.optimizer.decoupled = false;
        }
        OptimizerKind::Adamw => {
            recipe.optimizer.beta1 = read_f64(&mut ar, "beta1") as f32;
            recipe.optimizer.beta2 = read_f64(&mut ar, "beta2") as f32;
            recipe.optimizer.eps = read_f64(&mut ar, "eps") as f32;
            recipe.optimizer.weight_decay = read_f64(&mut ar, "weight_decay") as f32;
        }
    }
    let model = load_model(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mlp.onnx")).unwrap();
    let art = build(&model, &recipe).unwrap();
    let spec = Spec::from_artifacts(&art, true);
    let mut t = Trainer::new(
        spec,
        &SessionOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut worst = 0.0f32;
    for s in 1..=2 {
        let (xs, x) = read_f32(&mut ar, &format!("x{s}"));
        let y = read_i64(&mut ar, &format!("labels{s}"));
        let (_, want_loss) = read_f32(&mut ar, &format!("loss{s}"));
        let (loss, _) = t.step(x, &xs, &Labels::Classes(y), lr, s).unwrap();
        assert!(
            (loss - want_loss[0]).abs() < 1e-5,
            "step {s}: loss {loss} vs torch {}",
            want_loss[0]
        );
        let state: TensorMap = t.download().unwrap();
        for p in [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias",
        ] {
            let (ws, want) = read_f32(&mut ar, &format!("after{s}:{p}"));
            let (gs, got) = &state[p];
            assert_eq!(&ws, gs, "{p}");
            for (a, b) in got.iter().zip(&want) {
                let d = (a - b).abs();
                worst = worst.max(d);
                assert!(d <= 1e-5, "step {s}, {p}: {a} vs torch {b} (|diff| {d})");
            }
        }
    }
    eprintln!("{fixture}: max |diff| {worst:e}");
}

#[test]
fn sgd_nesterov_coupled_weight_decay_matches_pytorch() {
    check("mlp_sgd.npz", OptimizerKind::Sgd);
}

#[test]
fn adamw_matches_pytorch() {
    check("mlp_adamw.npz", OptimizerKind::Adamw);
}
