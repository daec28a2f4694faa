//! Issue #7: "The exported file's size is about the bytes of its parameters: no leftover
//! training state", and "Exported models pass the onnx checker and load in a fresh
//! Python that has only onnxruntime installed."

mod common;
mod export_support;

use std::collections::HashSet;
use std::path::Path;

use export_support as s;
use regraft::io::load_model;
use regraft::proto::{ModelProto, nbytes};
use regraft::runtime::checkpoint;

fn graph(m: &ModelProto) -> &regraft::proto::GraphProto {
    m.graph.as_ref().unwrap()
}

/// Train a model for one epoch on digits_train (20 % held out), export it.
fn trained_export(
    name: &str,
    dir: &Path,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = dir.join(format!("{name}-run"));
    s::train(
        &s::model(name),
        &s::data("digits_train"),
        &["--val-fraction", "0.2", "--epochs", "1"],
        &run,
    );
    let out = dir.join(format!("{name}.onnx"));
    let mut args = vec!["export", run.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    s::regraft_ok(&args);
    (run, out)
}

#[test]
fn exported_file_is_its_parameters_and_nothing_of_training() {
    let dir = common::tempdir();
    for name in ["cnn", "mlp"] {
        let (run, out) = trained_export(name, dir.path(), &[]);
        let m = load_model(&out).unwrap();
        let g = graph(&m);
        let original = load_model(s::model(name)).unwrap();
        let og = graph(&original);

        // Only the data input; logits and probs out.
        let inputs: Vec<&str> = g.input.iter().map(|i| i.name()).collect();
        assert_eq!(inputs, ["x"], "{name}: inputs");
        let outputs: Vec<&str> = g.output.iter().map(|o| o.name()).collect();
        assert_eq!(outputs, ["logits", "probs"], "{name}: outputs");

        // Initializers: the model's own parameters and buffers (same names, shapes), plus
        // the temperature; no optimizer slot of the checkpoint.
        let own: HashSet<&str> = og.initializer.iter().map(|t| t.name()).collect();
        let names: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        let extra: Vec<&&str> = names.difference(&own).collect();
        assert!(
            extra.len() <= 1 && extra.iter().all(|n| n.starts_with("export/")),
            "{name}: initializers not in the model: {extra:?}"
        );
        assert_eq!(
            own.difference(&names).count(),
            0,
            "{name}: parameters dropped"
        );
        let ck = checkpoint::load(&run.join("checkpoint.safetensors"))
            .unwrap()
            .tensors;
        let slots: Vec<&String> = ck.keys().filter(|k| !own.contains(k.as_str())).collect();
        assert!(
            !slots.is_empty(),
            "{name}: the checkpoint holds optimizer state"
        );
        for k in &slots {
            assert!(
                !names.contains(k.as_str()),
                "{name}: optimizer slot '{k}' exported"
            );
        }

        // No training ops or values: every op is the model's, or the export's Div/Softmax.
        let ops: HashSet<&str> = og.node.iter().map(|n| n.op_type()).collect();
        for n in &g.node {
            assert!(
                ops.contains(n.op_type()) || ["Div", "Softmax"].contains(&n.op_type()),
                "{name}: node {} ({}) is not inference",
                n.name(),
                n.op_type()
            );
            for v in n.input.iter().chain(&n.output) {
                assert!(
                    !["labels", "loss", "lr"].contains(&v.as_str()),
                    "{name}: {} uses '{v}'",
                    n.name()
                );
            }
        }

        // Size: the parameters' bytes plus at most 5 % and 8 KB of graph and metadata.
        let params: u64 = g.initializer.iter().map(nbytes).sum();
        let size = std::fs::metadata(&out).unwrap().len();
        eprintln!("{name}: {size} bytes for {params} bytes of initializers");
        assert!(size >= params, "{name}: {size} < {params}");
        assert!(
            size as f64 <= params as f64 * 1.05 + 8192.0,
            "{name}: {size} bytes for {params} bytes of initializers"
        );
        // Nothing written beside it.
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| (f.starts_with(name) && f.ends_with(".data")) || f.starts_with(".regraft-"))
            .collect();
        assert!(beside.is_empty(), "{name}: also wrote {beside:?}");
    }
}

/// Loads the model with ONNX Runtime's Python API only (`onnx` is made unimportable
/// first), runs it on the test set and prints inputs, outputs, values and metadata.
const FRESH_PYTHON: &str = r#"
import json, sys
sys.modules["onnx"] = None  # the model must load without the onnx package
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])["x"]
ins = [i.name for i in s.get_inputs()]
values = s.run(None, {ins[0]: x})
print(json.dumps({
    "inputs": ins,
    "outputs": [o.name for o in s.get_outputs()],
    "shapes": [list(v.shape) for v in values],
    "values": [v.astype(np.float64).ravel().tolist() for v in values],
    "metadata": s.get_modelmeta().custom_metadata_map,
}))
"#;

#[test]
fn exported_model_passes_the_checker_and_loads_in_plain_onnxruntime() {
    let dir = common::tempdir();
    for (name, extra, outputs) in [
        ("cnn", vec![], vec!["logits", "probs"]),
        ("mlp", vec!["--outputs", "probs"], vec!["probs"]),
    ] {
        let (_, out) = trained_export(name, dir.path(), &extra);
        common::assert_checker_passes(&out);

        let test = s::data("digits_test");
        let stdout = common::run_ok(
            std::process::Command::new(common::python())
                .arg("-I")
                .arg("-c")
                .arg(FRESH_PYTHON)
                .arg(&out)
                .arg(&test),
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["inputs"], serde_json::json!(["x"]), "{name}");
        assert_eq!(v["outputs"], serde_json::json!(outputs), "{name}");
        let t: f64 = v["metadata"]["regraft.temperature"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no regraft.temperature in {}", v["metadata"]))
            .parse()
            .unwrap();
        assert!(t > 0.0);

        // Same values as tract-onnx in this process.
        let ds = s::load("digits_test");
        let mut shape = vec![ds.len()];
        shape.extend(&ds.sample_shape);
        let tr =
            regraft::runtime::tract::run(&std::fs::read(&out).unwrap(), &ds.x, &shape).unwrap();
        assert_eq!(tr.len(), outputs.len());
        for (k, (tshape, tv)) in tr.iter().enumerate() {
            assert_eq!(
                v["shapes"][k],
                serde_json::json!(tshape),
                "{name}: output {k}"
            );
            let pv = v["values"][k].as_array().unwrap();
            let d = pv
                .iter()
                .zip(tv)
                .map(|(a, &b)| (a.as_f64().unwrap() - b as f64).abs())
                .fold(0.0, f64::max);
            assert!(d <= 1e-5, "{name}: output {k} differs from tract by {d}");
        }
    }
}
