//! Issue #4: interrupting `regraft train` — `kill -9`, or Ctrl-C in the middle of an
//! epoch — and continuing with `--resume` gives the same final state (parameters,
//! momentum, BatchNorm statistics) as an uninterrupted run, bit for bit, and the same
//! per-epoch metrics.
//!
//! The models: the CNN (BatchNormalization buffers are part of the state) with the
//! default recipe, and the MLP with cross-regularization by noise (the validation
//! step's parameters, their Adam state, its place in the validation split and the noise
//! draws must all continue where they were). Every run uses the same thread count so
//! ONNX Runtime's arithmetic is the same.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regraft::runtime::checkpoint::{self, Position, TensorMap};

/// A training run to interrupt: the model, extra flags and its length.
struct Case {
    id: usize,
    model: &'static str,
    extra: &'static [&'static str],
    epochs: usize,
}

/// The CNN with the default recipe (SGD with Nesterov momentum).
const CNN: Case = Case {
    id: 0,
    model: "models/cnn.onnx",
    extra: &[],
    epochs: 6,
};

/// Cross-regularization with noise sites: the validation step, its Adam state, its cursor
/// in the validation split and the noise draws must all continue where they were.
const CROSS_NOISE: Case = Case {
    id: 1,
    model: "models/mlp.onnx",
    extra: &["--regularizer", "cross-noise", "--every", "3"],
    epochs: 4,
};

fn args(case: &Case, run: &Path, resume: bool) -> Vec<String> {
    let r = common::root();
    let mut v: Vec<String> = vec![
        "train".into(),
        r.join(case.model).display().to_string(),
        "--data".into(),
        r.join("tests/data/digits_train.npz").display().to_string(),
        "--val".into(),
        r.join("tests/data/digits_val.npz").display().to_string(),
        "--epochs".into(),
        case.epochs.to_string(),
        "--batch-size".into(),
        "64".into(),
        "--lr".into(),
        "0.05".into(),
        "--seed".into(),
        "7".into(),
        "--threads".into(),
        "2".into(),
        "--quiet".into(),
        "-o".into(),
        run.display().to_string(),
    ];
    v.extend(case.extra.iter().map(|s| s.to_string()));
    if resume {
        v.push("--resume".into());
    }
    v
}

fn spawn(case: &Case, run: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_regraft"))
        .args(args(case, run, false))
        .current_dir(common::root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start regraft train")
}

fn run_to_end(case: &Case, run: &Path, resume: bool) -> String {
    let out = common::regraft(&args(case, run, resume));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "regraft train{} failed:\n{err}",
        if resume { " --resume" } else { "" }
    );
    err
}

/// Per-epoch metrics that must not depend on interruptions (timings excluded).
fn metrics(run: &Path) -> Vec<(u64, u64, String, String, String, String)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}"));
            (
                v["epoch"].as_u64().unwrap(),
                v["step"].as_u64().unwrap(),
                v["train_loss"].to_string(),
                v["train_accuracy"].to_string(),
                v["val_loss"].to_string(),
                v["val_accuracy"].to_string(),
            )
        })
        .collect()
}

struct Final {
    tensors: TensorMap,
    position: Position,
    metrics: Vec<(u64, u64, String, String, String, String)>,
    epoch_seconds: f64,
}

fn read_final(run: &Path) -> Final {
    let c =
        checkpoint::load(&run.join("checkpoint.safetensors")).expect("the final checkpoint loads");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epoch_seconds = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seconds"]
                .as_f64()
                .unwrap()
        })
        .fold(0.0, f64::max);
    Final {
        tensors: c.tensors,
        position: c.position.expect("a position"),
        metrics: metrics(run),
        epoch_seconds,
    }
}

/// The uninterrupted run of a case, made once per test binary.
fn reference(case: &Case) -> &'static Final {
    static REFS: [OnceLock<Final>; 2] = [OnceLock::new(), OnceLock::new()];
    REFS[case.id].get_or_init(|| {
        let tmp = common::tempdir();
        let run = tmp.path().join("a");
        run_to_end(case, &run, false);
        let f = read_final(&run);
        assert_eq!(f.position.epoch, case.epochs);
        assert_eq!(f.metrics.len(), case.epochs);
        f
    })
}

/// Wait until the child's first end-of-epoch checkpoint is on disk.
fn wait_for_checkpoint(child: &mut Child, run: &Path) -> PathBuf {
    let ckpt = run.join("checkpoint.safetensors");
    let t0 = Instant::now();
    while !ckpt.is_file() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("regraft train ended ({status}) before its first checkpoint");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ckpt
}

fn assert_same_state(got: &Final, want: &Final, what: &str) {
    assert_eq!(got.position, want.position, "{what}: final position");
    let names = |t: &TensorMap| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&got.tensors),
        names(&want.tensors),
        "{what}: tensor names"
    );
    assert!(
        want.tensors.keys().any(|k| k.ends_with(".momentum")),
        "the state holds momentum"
    );
    let mut differ = vec![];
    for (k, (shape, a)) in &want.tensors {
        let (s, b) = &got.tensors[k];
        assert_eq!(s, shape, "{what}: shape of {k}");
        let n = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        if n > 0 {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            differ.push(format!(
                "{k}: {n} of {} values differ (max |diff| {worst:e})",
                a.len()
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{what}: the resumed run's final state differs from the uninterrupted run's:\n{}",
        differ.join("\n")
    );
    assert_eq!(
        got.metrics, want.metrics,
        "{what}: per-epoch metrics (epoch, step, losses, accuracies)"
    );
}

/// Kill the run with SIGKILL some way into its second epoch, then --resume.
fn kill_9_and_resume(case: &Case, what: &str) {
    let want = reference(case);
    let tmp = common::tempdir();
    let run = tmp.path().join("b");
    let mut child = spawn(case, &run);
    wait_for_checkpoint(&mut child, &run);
    // Into the next epoch, so the kill throws away unsaved steps.
    std::thread::sleep(Duration::from_secs_f64(want.epoch_seconds * 0.4));
    child.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was not killed: {status}");
    let at_kill = checkpoint::load(&run.join("checkpoint.safetensors"))
        .expect("the checkpoint survives kill -9");
    let pos = at_kill.position.expect("a position");
    assert!(
        (1..case.epochs).contains(&pos.epoch),
        "the run was killed at {pos:?}, not after its first epoch and before its last (machine too fast? raise the epochs)"
    );
    eprintln!("{what}: killed with {} epochs checkpointed", pos.epoch);
    let err = run_to_end(case, &run, true);
    assert!(
        err.contains(&format!("resuming at epoch {}", pos.epoch + 1)),
        "{err}"
    );
    assert_same_state(&read_final(&run), want, what);
}

/// Send SIGINT (Ctrl-C) in the middle of the second epoch, then --resume.
fn ctrl_c_and_resume(case: &Case, what: &str) {
    let want = reference(case);
    let tmp = common::tempdir();
    let run = tmp.path().join("c");
    let mut child = spawn(case, &run);
    wait_for_checkpoint(&mut child, &run);
    std::thread::sleep(Duration::from_secs_f64(want.epoch_seconds * 0.5));
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill -INT");
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "Ctrl-C ends the run with exit code 1:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: interrupted at step ") && last.contains("--resume"),
        "the last line says where it stopped and how to continue:\n{err}"
    );
    let pos = checkpoint::load(&run.join("checkpoint.safetensors"))
        .unwrap()
        .position
        .expect("a position");
    assert!(
        pos.epoch >= 1 && pos.epoch < case.epochs,
        "interrupted at {pos:?}"
    );
    assert!(
        pos.batch > 0,
        "Ctrl-C saves the position inside the epoch: {pos:?}"
    );
    assert!(
        last.contains(&format!("step {}", pos.step)),
        "the message names the saved step {}: {last}",
        pos.step
    );
    eprintln!(
        "{what}: interrupted at epoch {}, batch {} (step {})",
        pos.epoch + 1,
        pos.batch,
        pos.step
    );
    let err = run_to_end(case, &run, true);
    assert!(
        err.contains(&format!(
            "resuming at epoch {}, batch {}",
            pos.epoch + 1,
            pos.batch
        )),
        "{err}"
    );
    assert_same_state(&read_final(&run), want, what);
}

#[test]
fn kill_9_then_resume_gives_the_uninterrupted_weights_bit_for_bit() {
    assert!(
        reference(&CNN)
            .tensors
            .keys()
            .any(|k| k.ends_with("running_mean")),
        "the state holds BatchNorm statistics"
    );
    kill_9_and_resume(&CNN, "kill -9 + --resume");
}

#[test]
fn ctrl_c_mid_epoch_then_resume_gives_the_uninterrupted_weights_bit_for_bit() {
    ctrl_c_and_resume(&CNN, "Ctrl-C + --resume");
}

#[test]
fn cross_noise_run_resumes_bit_for_bit() {
    let keys = &reference(&CROSS_NOISE).tensors;
    assert!(
        keys.keys().any(|k| k.ends_with(".log_sigma"))
            && keys.keys().any(|k| k.ends_with(".log_sigma.exp_avg")),
        "the state holds the noise scales and their optimizer state: {:?}",
        keys.keys().collect::<Vec<_>>()
    );
    ctrl_c_and_resume(&CROSS_NOISE, "cross-noise, Ctrl-C + --resume");
}
