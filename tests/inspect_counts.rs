//! `regraft inspect --json` against independent counts (issue #2): the `onnx` package's
//! view of every model (initializer elements and bytes, opsets, op histogram, inputs and
//! outputs), and PyTorch's parameter and buffer counts from the models' manifest.json.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use common::*;
use serde_json::Value;

fn inspect_json(model: &Path) -> Value {
    let out = regraft(&[
        OsStr::new("inspect"),
        OsStr::new("--json"),
        model.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "regraft inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("'{k}' is not a count in {v}"))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x.as_str()
                .or_else(|| x["name"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

fn compare(model: &Path) {
    let r = inspect_json(model);
    let c = onnx_counts(model);

    let elements = u(&r, "trainable_parameters") + u(&r, "buffers") + u(&r, "constants");
    let bytes = u(&r, "trainable_bytes") + u(&r, "buffer_bytes") + u(&r, "constant_bytes");
    assert_eq!(
        elements,
        u(&c, "total_elements"),
        "total initializer elements"
    );
    assert_eq!(bytes, u(&c, "total_bytes"), "total initializer bytes");
    assert_eq!(r["opsets"], c["opsets"], "opsets");
    assert_eq!(r["ops"], c["ops"], "op histogram");
    assert_eq!(r["nodes"], c["nodes"], "node count");
    assert_eq!(names(&r["inputs"]), names(&c["inputs"]), "inputs");
    assert_eq!(names(&r["outputs"]), names(&c["outputs"]), "outputs");
    assert_eq!(r["ir_version"], c["ir_version"], "IR version");

    let per = |v: &Value| -> BTreeMap<String, (String, u64, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    (
                        t["dtype"].as_str().unwrap().to_string(),
                        u(t, "elements"),
                        u(t, "bytes"),
                    ),
                )
            })
            .collect()
    };
    assert_eq!(
        per(&r["initializers"]),
        per(&c["initializers"]),
        "per-initializer dtype, elements and bytes"
    );

    if let Some((params, buffers)) = manifest_counts(model) {
        assert_eq!(
            u(&r, "trainable_parameters"),
            params,
            "PyTorch's parameter count"
        );
        assert_eq!(u(&r, "buffers"), buffers, "PyTorch's buffer count");
    }
}

#[test]
fn inspect_counts_match_the_onnx_package() {
    let models = all_models();
    for_each_parallel(&models, |p| label(p), |p| compare(p));
}

#[test]
fn every_committed_model_is_in_its_manifest() {
    for m in committed_models() {
        if m.parent().unwrap().join("manifest.json").is_file() {
            assert!(
                manifest_counts(&m).is_some(),
                "{} is not listed in the manifest.json beside it",
                label(&m)
            );
        }
    }
}

#[test]
fn synthetic_models_split_parameters_buffers_and_constants() {
    // Known by construction (tools/onnx_view.py synth).
    let want = [
        ("mlp.onnx", 64 * 32 + 32 + 32 * 10 + 10, 0, 0),
        ("conv_bn.onnx", 8 * 9 + 8 + 8 + 10 * 128 + 10, 16, 4),
        ("mlp_external.onnx", 64 * 32 + 32 + 32 * 10 + 10, 0, 0),
    ];
    for (p, (file, params, buffers, constants)) in synth_models().iter().zip(want) {
        assert!(p.ends_with(file));
        let r = inspect_json(p);
        assert_eq!(
            (
                u(&r, "trainable_parameters"),
                u(&r, "buffers"),
                u(&r, "constants")
            ),
            (params, buffers, constants),
            "{file}"
        );
        assert_eq!(u(&r, "trainable_bytes"), 4 * params, "{file}");
    }
}

#[test]
fn inspect_text_output_survives_a_closed_pipe() {
    // `regraft inspect m.onnx | head -1`: the reader goes away early.
    let model = &synth_models()[1];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_regraft"))
        .arg("inspect")
        .arg(model)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end before regraft writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{}: {err}", out.status);
}
