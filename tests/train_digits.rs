//! Issue #4: the digits MLP trained by `regraft train` with PyTorch's recipe reaches
//! PyTorch's test accuracy within 1 point, in at most 60 s on 2 CPU threads.
//!
//! The reference (tests/fixtures/train/digits_mlp_reference.json) is made by
//! tests/fixtures/train/make_digits_reference.py: the same initial weights
//! (models/mlp.onnx), the same data, SGD with Nesterov momentum 0.9 and coupled weight
//! decay 5e-4, lr 0.05, batch 64, 20 epochs, and its test accuracy averaged over
//! several PyTorch shuffling seeds. Only the shuffling differs (each framework uses its
//! own generator), so this test also averages regraft over several `--seed`s and
//! compares means; one seed alone moves test accuracy by about a point on 300 samples.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ort::value::{DynValue, Tensor};
use regraft::runtime::checkpoint;
use regraft::runtime::data::{Labels, load_npz};
use regraft::runtime::{SessionOptions, session};

const REFERENCE: &str = "tests/fixtures/train/digits_mlp_reference.json";
const SEEDS: [u64; 5] = [0, 1, 2, 3, 4];
const MAX_SECONDS: f64 = 60.0;
const TOLERANCE_POINTS: f64 = 1.0;

/// Test accuracy of a finished run: its eval.onnx on ONNX Runtime with the tensors of
/// its checkpoint.
fn test_accuracy(run: &Path, test: &Path) -> f64 {
    let ckpt =
        checkpoint::load(&run.join("checkpoint.safetensors")).expect("the run's checkpoint loads");
    let bytes = std::fs::read(run.join("eval.onnx")).expect("the run folder has eval.onnx");
    let mut s = session(
        &bytes,
        &SessionOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("eval.onnx loads");
    let ds = load_npz(test, false).expect("test data loads");
    let Labels::Classes(y) = &ds.y else {
        panic!("class labels")
    };
    let n = ds.len();
    let mut feeds: Vec<(String, DynValue)> = vec![
        (
            "x".into(),
            Tensor::from_array((vec![n, ds.sample_size()], ds.x.clone()))
                .unwrap()
                .into_dyn(),
        ),
        (
            "labels".into(),
            Tensor::from_array((vec![n], y.clone())).unwrap().into_dyn(),
        ),
    ];
    let inputs: Vec<String> = s.inputs().iter().map(|i| i.name().to_string()).collect();
    for name in &inputs {
        if name == "x" || name == "labels" {
            continue;
        }
        let (shape, data) = ckpt
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("the checkpoint lacks eval input '{name}'"));
        feeds.push((
            name.clone(),
            Tensor::from_array((shape.clone(), data.clone()))
                .unwrap()
                .into_dyn(),
        ));
    }
    let outs = s.run(feeds).expect("eval.onnx runs");
    let (shape, logits) = outs["logits"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(shape[0] as usize, n);
    regraft::metrics::accuracy(logits, shape[1] as usize, y)
}

fn sha256_hex(path: &Path) -> String {
    let code =
        "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())";
    common::run_ok(
        std::process::Command::new(common::python())
            .args(["-c", code])
            .arg(path),
    )
    .trim()
    .to_string()
}

#[test]
fn digits_mlp_matches_pytorch_accuracy_within_one_point_in_60s() {
    let root = common::root();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join(REFERENCE)).expect("the reference JSON is committed"),
    )
    .unwrap();
    let model = root.join(reference["model"].as_str().unwrap());
    assert_eq!(
        sha256_hex(&model),
        reference["model_sha256"].as_str().unwrap(),
        "{} changed since {REFERENCE} was made; rerun tests/fixtures/train/make_digits_reference.py",
        model.display()
    );
    let r = &reference["recipe"];
    assert_eq!(r["optimizer"], "sgd");
    assert_eq!(
        r["weight_decay_coupled"], true,
        "regraft's SGD decay is coupled like torch's"
    );
    assert_eq!(r["schedule"], "constant");
    let torch_acc = reference["test_accuracy_mean"].as_f64().unwrap();
    let train = root.join(reference["train"].as_str().unwrap());
    let test = root.join(reference["test"].as_str().unwrap());
    let epochs = r["epochs"].as_u64().unwrap();

    let tmp = common::tempdir();
    let mut accs = vec![];
    let mut times = vec![];
    for seed in SEEDS {
        let run = tmp.path().join(format!("seed{seed}"));
        let args: Vec<String> = vec![
            "train".into(),
            model.display().to_string(),
            "--data".into(),
            train.display().to_string(),
            "--loss".into(),
            r["loss"].as_str().unwrap().into(),
            "--optimizer".into(),
            r["optimizer"].as_str().unwrap().into(),
            "--lr".into(),
            r["lr"].to_string(),
            "--momentum".into(),
            r["momentum"].to_string(),
            "--nesterov".into(),
            r["nesterov"].to_string(),
            "--weight-decay".into(),
            r["weight_decay"].to_string(),
            "--schedule".into(),
            r["schedule"].as_str().unwrap().into(),
            "--batch-size".into(),
            r["batch_size"].to_string(),
            "--epochs".into(),
            epochs.to_string(),
            "--seed".into(),
            seed.to_string(),
            "--threads".into(),
            "2".into(),
            "--quiet".into(),
            "-o".into(),
            run.display().to_string(),
        ];
        let t0 = Instant::now();
        let out = common::regraft(&args);
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "regraft {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let pos = checkpoint::load(&run.join("checkpoint.safetensors"))
            .unwrap()
            .position
            .expect("a position");
        assert_eq!(pos.epoch as u64, epochs, "the checkpoint is the final one");
        let acc = test_accuracy(&run, &test);
        eprintln!(
            "seed {seed}: test accuracy {:.2} % in {secs:.1} s (regraft train, 2 threads)",
            acc * 100.0
        );
        assert!(
            secs <= MAX_SECONDS,
            "seed {seed}: training took {secs:.1} s, more than the {MAX_SECONDS} s allowed"
        );
        accs.push(acc);
        times.push(Duration::from_secs_f64(secs));
    }
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let gap = (mean - torch_acc) * 100.0;
    eprintln!(
        "regraft mean test accuracy {:.2} % over seeds {SEEDS:?}; PyTorch {:.2} % (per seed {}); gap {gap:+.2} points; slowest run {:.1} s",
        mean * 100.0,
        torch_acc * 100.0,
        reference["test_accuracy_per_seed"],
        times.iter().max().unwrap().as_secs_f64()
    );
    assert!(
        gap.abs() <= TOLERANCE_POINTS,
        "regraft's mean test accuracy {:.2} % is {gap:+.2} points from PyTorch's {:.2} % (allowed ±{TOLERANCE_POINTS})",
        mean * 100.0,
        torch_acc * 100.0
    );
    // An MLP gets about 96–98 % on digits or better; anything less means training is broken
    // even if the reference were off.
    assert!(
        mean >= 0.96,
        "mean test accuracy {:.2} % is below 96 %",
        mean * 100.0
    );
}
