//! Helpers shared by the integration tests: the project's Python (`.venv`, made by
//! `tools/setup`), `tools/onnx_view.py` (the `onnx` package's and ONNX Runtime's own view
//! of a model), the `regraft` binary, and the models to test on.
//!
//! A missing `.venv` fails the tests with a message saying how to make it; nothing is
//! skipped silently.

#![allow(dead_code)] // each test crate uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/bin/python`; panics with the fix when it is missing.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run tools/setup (it makes .venv with onnx, numpy and onnxruntime, which these tests use as references)",
        p.display()
    );
    p
}

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("regraft-test-")
        .tempdir()
        .expect("create a temporary folder")
}

fn show(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// Run a command; panic with its output unless it succeeds. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", show(cmd)));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `tools/onnx_view.py ARGS...` as a command.
pub fn onnx_view_cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(python());
    c.arg(root().join("tools/onnx_view.py")).args(args);
    c
}

/// Run `tools/onnx_view.py ARGS...`, panic unless it succeeds; returns stdout.
pub fn onnx_view<S: AsRef<OsStr>>(args: &[S]) -> String {
    run_ok(&mut onnx_view_cmd(args))
}

/// `onnx.checker.check_model(path, full_check=True)` must pass.
pub fn assert_checker_passes(path: &Path) {
    onnx_view(&[OsStr::new("check"), path.as_os_str()]);
}

/// The `onnx` package's counts for a model (see `onnx_view.py counts`).
pub fn onnx_counts(path: &Path) -> serde_json::Value {
    let s = onnx_view(&[OsStr::new("counts"), path.as_os_str()]);
    serde_json::from_str(&s).expect("counts prints JSON")
}

/// The `regraft` binary with `args`, run from the repository root.
pub fn regraft<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regraft"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run the regraft binary")
}

/// Committed models: `models/*.onnx` and `tests/data/models/*.onnx`, sorted.
pub fn committed_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["models", "tests/data/models"] {
        let Ok(rd) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        out.extend(
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "onnx")),
        );
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no models/*.onnx or tests/data/models/*.onnx was found; they are committed (tools/export_models.py makes them)"
    );
    out
}

/// Small models made with `onnx.helper` (`onnx_view.py synth`): an MLP (Gemm/Relu), a
/// Conv+BatchNormalization+MaxPool net, and an MLP with its weights in an external data
/// file. Made once per version of onnx_view.py, in a folder of the target directory that
/// is never written again once in place (so concurrent test runs can share it).
pub fn synth_models() -> Vec<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let script = std::fs::read(root().join("tools/onnx_view.py")).expect("tools/onnx_view.py");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        script.hash(&mut h);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-{:016x}", h.finish()));
        if !dir.is_dir() {
            let tmp = tempfile::Builder::new()
                .prefix(".synth-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .expect("create a temporary folder");
            onnx_view(&[OsStr::new("synth"), tmp.path().as_os_str()]);
            // Another test run may have won the race; then its folder is used.
            let made = tmp.keep();
            if std::fs::rename(&made, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&made);
            }
        }
        dir
    });
    ["mlp.onnx", "conv_bn.onnx", "mlp_external.onnx"]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

/// Every model the tests run on: the committed ones and the synthetic ones.
pub fn all_models() -> Vec<PathBuf> {
    let mut v = committed_models();
    v.extend(synth_models());
    v
}

/// PyTorch's `(trainable_parameters, buffers)` for a committed model, from the
/// `manifest.json` beside it (an object keyed by model name, each entry naming its
/// `file`). `None` when there is no manifest or it does not list the file.
pub fn manifest_counts(model: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(model.parent()?.join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let file = model.file_name()?.to_str()?;
    let entry = v
        .as_object()?
        .values()
        .find(|e| e.get("file").and_then(|f| f.as_str()) == Some(file))?;
    Some((
        entry["trainable_parameters"]
            .as_u64()
            .expect("trainable_parameters is a count"),
        entry["buffers"].as_u64().expect("buffers is a count"),
    ))
}

/// A short label for a model path in messages.
pub fn label(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Run `f` on every item on a few threads; panic listing every failure.
pub fn for_each_parallel<T: Sync>(
    items: &[T],
    name: impl Fn(&T) -> String + Sync,
    f: impl Fn(&T) + Sync,
) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)));
                    if let Err(e) = r {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{}: {msg}", name(item)));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
