//! Load → save round trips (issue #2): for every committed model and the synthetic ones,
//! the saved file passes the ONNX checker's full check, ONNX Runtime gives bit-identical
//! outputs for it and the original on the same input, and loading it back gives the same
//! model proto. Saving goes both inline and with `External::To("weights.bin")`.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;
use regraft::io::{External, IR_VERSION, load_model, save_model};
use regraft::proto::ModelProto;

/// The model as regraft would write it: only the IR version may change on save.
fn normalized(mut m: ModelProto) -> ModelProto {
    if m.ir_version() <= 0 || m.ir_version() > IR_VERSION {
        m.ir_version = Some(IR_VERSION);
    }
    m
}

fn round_trip(orig: &Path) {
    let dir = tempdir();
    let d = dir.path();
    let model = load_model(orig).unwrap();

    let inline = d.join("inline.onnx");
    save_model(&model, &inline, &External::Auto).unwrap();

    let ext_dir = d.join("ext");
    let ext = ext_dir.join("model.onnx");
    save_model(&model, &ext, &External::To("weights.bin".into())).unwrap();
    let weights = ext_dir.join("weights.bin");
    assert!(weights.is_file(), "External::To wrote no weights.bin");
    let big: u64 = model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter_map(|t| t.raw_data.as_ref())
        .map(|r| r.len() as u64)
        .filter(|&n| n >= 1024)
        .sum();
    assert!(
        std::fs::metadata(&weights).unwrap().len() >= big,
        "weights.bin holds less than the model's large tensors ({big} bytes)"
    );

    // Reload the external-data copy and save it inline again.
    let reloaded = load_model(&ext).unwrap();
    let again = d.join("again.onnx");
    save_model(&reloaded, &again, &External::Auto).unwrap();

    let want = normalized(model);
    for p in [&inline, &ext, &again] {
        let back = load_model(p).unwrap();
        assert!(
            back.ir_version() <= IR_VERSION,
            "{}: IR version {}",
            p.display(),
            back.ir_version()
        );
        assert!(
            back == want,
            "{} does not load back as the model that was saved",
            p.display()
        );
    }

    onnx_view(&[
        OsStr::new("check"),
        inline.as_os_str(),
        ext.as_os_str(),
        again.as_os_str(),
    ]);

    onnx_view(&[
        OsStr::new("compare"),
        orig.as_os_str(),
        inline.as_os_str(),
        ext.as_os_str(),
        again.as_os_str(),
    ]);
}

#[test]
fn every_model_round_trips_bit_identically() {
    let models = all_models();
    for_each_parallel(&models, |p| label(p), |p| round_trip(p));
}

#[test]
fn external_data_model_saves_in_place() {
    // Overwriting the files a model was loaded from: the loaded weights are memory-mapped
    // views of the old data file, and saving replaces files by rename, so both stay valid.
    let src = synth_models()
        .into_iter()
        .find(|p| p.ends_with("mlp_external.onnx"))
        .unwrap();
    let dir = tempdir();
    let model_path = dir.path().join("mlp_external.onnx");
    std::fs::copy(&src, &model_path).unwrap();
    std::fs::copy(
        src.with_file_name("mlp_external.weights"),
        dir.path().join("mlp_external.weights"),
    )
    .unwrap();
    let before = load_model(&model_path).unwrap();
    save_model(
        &before,
        &model_path,
        &External::To("mlp_external.weights".into()),
    )
    .unwrap();
    let after = load_model(&model_path).unwrap();
    assert!(
        after == normalized(before),
        "the model changed when saved over itself"
    );
    assert_checker_passes(&model_path);
}

#[test]
fn external_data_must_stay_in_the_model_folder() {
    let model = load_model(&synth_models()[0]).unwrap();
    let dir = tempdir();
    for bad in ["../weights.bin", "/tmp/weights.bin", ""] {
        let e = save_model(&model, dir.path().join("m.onnx"), &External::To(bad.into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.onnx") && e.contains("inside the model's folder"),
            "{bad:?}: {e}"
        );
    }
}
