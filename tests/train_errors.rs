//! Issue #4: bad input is refused before training starts — one line on stderr naming the
//! file or flag, a non-zero exit, no panic, and nothing written to the run folder — and
//! a loss that turns NaN stops the run, names the step and keeps the last good
//! checkpoint.

mod common;

use std::path::Path;
use std::process::Output;

use npyz::WriterBuilder;
use regraft::runtime::checkpoint;

fn mlp() -> String {
    common::root().join("models/mlp.onnx").display().to_string()
}

fn digits(split: &str) -> String {
    common::root()
        .join(format!("tests/data/digits_{split}.npz"))
        .display()
        .to_string()
}

/// Write a dataset: x float32 [N, d], y int64 [M] (M is N unless testing a mismatch).
fn write_npz(path: &Path, x: &[f32], d: u64, y: &[i64]) {
    let mut w = npyz::npz::NpzWriter::create(path).unwrap();
    let n = x.len() as u64 / d;
    let mut a = w
        .array::<f32>("x", Default::default())
        .unwrap()
        .default_dtype()
        .shape(&[n, d])
        .begin_nd()
        .unwrap();
    a.extend(x.iter().copied()).unwrap();
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

/// 100 well-formed digits-like samples; the caller spoils one thing.
fn sample_data() -> (Vec<f32>, Vec<i64>) {
    let x = (0..100 * 64)
        .map(|i| ((i * 37) % 17) as f32 / 16.0)
        .collect();
    let y = (0..100).map(|i| i % 10).collect();
    (x, y)
}

fn train(extra: &[&str], run: &Path) -> Output {
    let mut a: Vec<String> = vec!["train".into(), mlp()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend([
        "--epochs".into(),
        "2".into(),
        "--threads".into(),
        "2".into(),
        "--quiet".into(),
        "-o".into(),
        run.display().to_string(),
    ]);
    common::regraft(&a)
}

/// A refusal: exit code `code`, one error line naming every one of `names`, no panic,
/// and no run folder.
fn assert_refused(out: &Output, run: &Path, code: i32, names: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}");
    assert!(!err.contains("panicked"), "a panic:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    // clap adds its own "For more information, try '--help'." under a usage error.
    let lines: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{err}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for n in names {
        assert!(line.contains(n), "the error does not name {n:?}: {line}");
    }
    assert!(
        !run.exists(),
        "the run folder {} was made for a refused run",
        run.display()
    );
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    line.to_string()
}

#[test]
fn features_that_do_not_fit_the_model_input_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let mnist1d = common::root().join("tests/data/mnist1d_train.npz");
    let out = train(&["--data", mnist1d.to_str().unwrap()], &run);
    let line = assert_refused(&out, &run, 1, &["mnist1d_train.npz", "[40]", "64"]);
    eprintln!("{line}");
    // The same check covers --val.
    let mnist1d_test = common::root().join("tests/data/mnist1d_test.npz");
    let out = train(
        &[
            "--data",
            &digits("train"),
            "--val",
            mnist1d_test.to_str().unwrap(),
        ],
        &run,
    );
    assert_refused(&out, &run, 1, &["mnist1d_test.npz", "[40]"]);
}

#[test]
fn labels_out_of_range_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    for (bad, sample) in [(10i64, 57usize), (-1, 3)] {
        let (x, mut y) = sample_data();
        y[sample] = bad;
        let f = tmp.path().join(format!("label{bad}.npz"));
        write_npz(&f, &x, 64, &y);
        let out = train(&["--data", f.to_str().unwrap()], &run);
        let line = assert_refused(
            &out,
            &run,
            1,
            &[
                &format!("label{bad}.npz"),
                &format!("label {bad}"),
                &format!("sample {sample}"),
                "10 classes",
            ],
        );
        eprintln!("{line}");
    }
}

#[test]
fn non_finite_inputs_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    for (bad, name, sample) in [(f32::NAN, "NaN", 42usize), (f32::INFINITY, "inf", 99)] {
        let (mut x, y) = sample_data();
        x[sample * 64 + 5] = bad;
        let f = tmp.path().join(format!("x_{name}.npz"));
        write_npz(&f, &x, 64, &y);
        // As training data and as validation data.
        let out = train(&["--data", f.to_str().unwrap()], &run);
        let line = assert_refused(
            &out,
            &run,
            1,
            &[&format!("x_{name}.npz"), name, &format!("sample {sample}")],
        );
        eprintln!("{line}");
        let out = train(
            &["--data", &digits("train"), "--val", f.to_str().unwrap()],
            &run,
        );
        assert_refused(&out, &run, 1, &[&format!("x_{name}.npz"), name]);
    }
}

#[test]
fn missing_or_malformed_data_files_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let missing = tmp.path().join("nope.npz");
    let out = train(&["--data", missing.to_str().unwrap()], &run);
    assert_refused(&out, &run, 1, &["nope.npz"]);
    let not_npz = tmp.path().join("junk.npz");
    std::fs::write(&not_npz, b"this is not a zip file").unwrap();
    let out = train(&["--data", not_npz.to_str().unwrap()], &run);
    assert_refused(&out, &run, 1, &["junk.npz"]);
    // y with fewer rows than x.
    let (x, y) = sample_data();
    let short = tmp.path().join("short.npz");
    write_npz(&short, &x[..50 * 64], 64, &y[..49]);
    let out = train(&["--data", short.to_str().unwrap()], &run);
    assert_refused(&out, &run, 1, &["short.npz", "50 samples"]);
}

#[test]
fn unknown_device_is_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let out = train(&["--data", &digits("train"), "--device", "tpu"], &run);
    let line = assert_refused(&out, &run, 2, &["--device", "tpu"]);
    eprintln!("{line}");
}

/// `--device cuda` never falls back to the CPU: with a CPU-only ONNX Runtime it fails
/// before anything is trained or written; a CUDA device that does not exist fails too.
#[test]
fn cuda_without_cuda_fails_loudly() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let providers = regraft::runtime::available_providers().expect("ONNX Runtime loads");
    if !providers.contains(&"CUDAExecutionProvider") {
        let out = train(&["--data", &digits("train"), "--device", "cuda"], &run);
        let line = assert_refused(&out, &run, 1, &["--device cuda", "CUDA"]);
        eprintln!("{line}");
    } else {
        eprintln!("this ONNX Runtime has the CUDA execution provider; only cuda:99 is checked");
    }
    let out = train(&["--data", &digits("train"), "--device", "cuda:99"], &run);
    assert_refused(&out, &run, 1, &["--device cuda:99"]);
}

fn finite_checkpoint(path: &Path) -> checkpoint::Loaded {
    let c = checkpoint::load(path).expect("the kept checkpoint loads");
    for (k, (_, v)) in &c.tensors {
        assert!(
            v.iter().all(|x| x.is_finite()),
            "the kept checkpoint's '{k}' is not finite"
        );
    }
    c
}

/// Parse "... at step S (epoch E, batch B) ..." from the error line.
fn step_epoch_batch(line: &str) -> (usize, usize, usize) {
    let rest = line
        .split(" at step ")
        .nth(1)
        .unwrap_or_else(|| panic!("no step named: {line}"));
    let nums: Vec<usize> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        rest.contains("(epoch ") && rest.contains(", batch "),
        "{line}"
    );
    (nums[0], nums[1], nums[2])
}

/// One run: the learning rate warms up linearly (cosine schedule with a warmup longer
/// than the run: 0.1 at the first step, +0.1 per step) from a value that trains in the
/// first epoch to ones that diverge a few epochs later (at step 113 of 19-step epochs
/// with ONNX Runtime 1.31.1). The run must stop at the first non-finite loss, name it,
/// and leave the checkpoint of the last finished epoch, finite.
#[test]
fn nan_loss_stops_the_run_names_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let mut a: Vec<String> = vec!["train".into(), mlp()];
    a.extend(
        [
            "--data",
            &digits("train"),
            "--epochs",
            "10",
            "--lr",
            "1000",
            "--schedule",
            "cosine",
            "--warmup-steps",
            "10000",
            "--threads",
            "2",
            "--quiet",
            "-o",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.push(run.display().to_string());
    let out = common::regraft(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("error: the loss became "), "{err}");
    let (step, epoch, batch) = step_epoch_batch(line);
    eprintln!("{line}");
    let steps_per_epoch = 1200usize.div_ceil(64);
    assert!(
        epoch >= 2,
        "the loss must diverge after the first epoch for this test to mean anything: {line}"
    );
    assert_eq!(step, (epoch - 1) * steps_per_epoch + batch, "{line}");
    let ckpt = run.join("checkpoint.safetensors");
    assert!(
        line.contains(&ckpt.display().to_string()),
        "the error names the kept checkpoint: {line}"
    );
    let c = finite_checkpoint(&ckpt);
    let pos = c.position.expect("a position");
    assert_eq!(
        (pos.epoch, pos.batch, pos.step),
        (epoch - 1, 0, (epoch - 1) * steps_per_epoch),
        "the last finished epoch's checkpoint"
    );
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        logged.lines().count(),
        epoch - 1,
        "one metrics line per finished epoch"
    );
}

/// The same through --resume with a learning rate that diverges at once: the checkpoint
/// the run started from is left exactly as it was.
#[test]
fn nan_loss_after_resume_leaves_the_checkpoint_untouched() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let run_s = run.display().to_string();
    let base = [
        "train",
        &mlp(),
        "--data",
        &digits("train"),
        "--threads",
        "2",
        "--quiet",
        "-o",
        &run_s,
    ];
    let out = common::regraft(&[&base[..], &["--epochs", "1"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = run.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let out = common::regraft(&[&base[..], &["--epochs", "3", "--lr", "1e9", "--resume"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err.lines().last().unwrap();
    eprintln!("{line}");
    assert!(line.starts_with("error: the loss became "), "{err}");
    let (step, epoch, _) = step_epoch_batch(line);
    assert!(step > 19 && epoch == 2, "{line}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the checkpoint of epoch 1 is unchanged"
    );
    let pos = finite_checkpoint(&ckpt).position.unwrap();
    assert_eq!(pos.epoch, 1);
}

#[test]
fn validation_step_flags_without_a_regularizer_that_has_one_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let train_data = digits("train");
    for flags in [
        &["--every", "3"][..],
        &["--val-lr", "0.1"][..],
        &["--val-optimizer", "sgd"][..],
        &["--val-batch", "4"][..],
    ] {
        let mut a = vec!["--data", train_data.as_str()];
        a.extend(flags);
        let out = train(&a, &run);
        assert_refused(&out, &run, 1, &[flags[0], "regularizer"]);
    }
    // The inverse rate's validation step has no batch size of its own.
    let out = train(
        &[
            "--data",
            &train_data,
            "--regularizer",
            "inverse-rate",
            "--val-batch",
            "4",
        ],
        &run,
    );
    assert_refused(&out, &run, 1, &["--val-batch", "cross-noise"]);
    // ... and a validation step only in validated mode.
    let out = train(
        &[
            "--data",
            &train_data,
            "--regularizer",
            "inverse-rate",
            "--every",
            "5",
        ],
        &run,
    );
    assert_refused(&out, &run, 1, &["--every", "--lambda-mode validated"]);
}

#[test]
fn cross_noise_flags_without_cross_noise_are_refused() {
    let tmp = common::tempdir();
    let run = tmp.path().join("run");
    let train_data = digits("train");
    for flags in [
        &["--sigma-per-channel"][..],
        &["--init-sigma", "0.3"][..],
        &["--regularizer", "cross-norm", "--sigma-per-channel"][..],
    ] {
        let mut a = vec!["--data", train_data.as_str()];
        a.extend(flags);
        let out = train(&a, &run);
        assert_refused(&out, &run, 1, &["--sigma-per-channel", "cross-noise"]);
    }
}
