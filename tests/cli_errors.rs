//! Bad input (issue #2): a one-line error on stderr naming the file and the problem, a
//! non-zero exit, and no panic. Also `regraft doctor`, which finds ONNX Runtime.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;
use regraft::io::{External, load_model, save_model};
use regraft::proto::{OperatorSetIdProto, make_node};

/// `regraft inspect FILE` must fail with one line naming `file_part` and every `problem`.
fn assert_clean_failure(file: &Path, file_part: &str, problem: &[&str]) {
    let out = regraft(&[OsStr::new("inspect"), file.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "regraft panicked:\n{err}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {} for:\n{err}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = err.strip_suffix('\n').unwrap_or(&err);
    assert!(
        !line.contains('\n') && line.starts_with("error: "),
        "not one 'error: ...' line:\n{err}"
    );
    assert!(
        line.contains(file_part),
        "does not name '{file_part}': {line}"
    );
    for p in problem {
        assert!(line.contains(p), "does not say '{p}': {line}");
    }
}

fn mlp() -> std::path::PathBuf {
    synth_models()
        .into_iter()
        .find(|p| p.ends_with("mlp.onnx"))
        .unwrap()
}

#[test]
fn truncated_file() {
    let dir = tempdir();
    let p = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(mlp()).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(
        &p,
        "truncated.onnx",
        &["not a valid ONNX model", "truncated"],
    );
}

#[test]
fn text_file() {
    let dir = tempdir();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "These are my notes, not an ONNX model.\n").unwrap();
    assert_clean_failure(&p, "notes.txt", &["not", "ONNX model"]);
}

#[test]
fn empty_file() {
    let dir = tempdir();
    let p = dir.path().join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    assert_clean_failure(&p, "empty.onnx", &["empty"]);
}

#[test]
fn unknown_op_domain() {
    let mut m = load_model(mlp()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let mut n = make_node("Frobnicate", "frob", &["logits"], &["frobbed"], vec![]);
    n.domain = Some("com.example".into());
    g.node.push(n);
    m.opset_import.push(OperatorSetIdProto {
        domain: Some("com.example".into()),
        version: Some(1),
    });
    let dir = tempdir();
    let p = dir.path().join("custom.onnx");
    save_model(&m, &p, &External::Auto).unwrap();
    assert_clean_failure(
        &p,
        "custom.onnx",
        &["unknown operator domain 'com.example'", "frob"],
    );
}

#[test]
fn missing_external_data_file() {
    let src = synth_models()
        .into_iter()
        .find(|p| p.ends_with("mlp_external.onnx"))
        .unwrap();
    let dir = tempdir();
    let p = dir.path().join("mlp_external.onnx");
    std::fs::copy(&src, &p).unwrap(); // without its mlp_external.weights
    assert_clean_failure(
        &p,
        "mlp_external.onnx",
        &["mlp_external.weights", "does not exist"],
    );
}

#[test]
fn truncated_external_data_file() {
    let src = synth_models()
        .into_iter()
        .find(|p| p.ends_with("mlp_external.onnx"))
        .unwrap();
    let dir = tempdir();
    let p = dir.path().join("mlp_external.onnx");
    std::fs::copy(&src, &p).unwrap();
    let w = std::fs::read(src.with_file_name("mlp_external.weights")).unwrap();
    std::fs::write(dir.path().join("mlp_external.weights"), &w[..w.len() - 100]).unwrap();
    assert_clean_failure(
        &p,
        "mlp_external.onnx",
        &["mlp_external.weights", "truncated"],
    );
}

#[test]
fn nonexistent_path() {
    let p = root().join("no/such/model.onnx");
    assert_clean_failure(&p, "no/such/model.onnx", &["No such file"]);
}

#[test]
fn a_folder() {
    let dir = tempdir();
    assert_clean_failure(dir.path(), &dir.path().display().to_string(), &["folder"]);
}

#[test]
fn doctor_finds_the_runtime() {
    let out = regraft(&["doctor", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "regraft doctor failed: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["execution_providers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "CPUExecutionProvider"),
        "{v}"
    );
    assert!(Path::new(v["library"].as_str().unwrap()).is_file(), "{v}");
}

#[test]
fn doctor_names_a_bad_ort_dylib_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regraft"))
        .arg("doctor")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
    assert!(err.contains("tools/setup"), "no install hint: {err}");
}
