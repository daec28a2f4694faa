//! Issue #7: "Bad input — a RUN folder without a checkpoint, a dataset whose shape does
//! not fit, an unknown --outputs name — gives a clear error and no partial output file."
//! Every refusal here must exit 1 with one line `error: ...` on stderr naming the culprit,
//! never panic, and leave neither the output file nor a temporary file behind.

mod common;
mod export_support;

use std::path::Path;

use export_support as s;

/// Nothing but the expected entries in `dir`: no output, no `.regraft-*.tmp`.
fn assert_nothing_written(dir: &Path, out: &Path, keep: &[&str]) {
    assert!(!out.exists(), "{} was written", out.display());
    let extra: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| !keep.contains(&f.as_str()))
        .collect();
    assert!(extra.is_empty(), "left behind: {extra:?}");
}

#[test]
fn export_refuses_bad_input_cleanly() {
    let dir = common::tempdir();
    let d = dir.path();
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.onnx");
    let o = out.to_str().unwrap();

    // A run folder without a checkpoint: what `regraft rewrite` writes.
    let rw = d.join("rewritten");
    s::regraft_ok(&[
        "rewrite",
        s::model("mlp").to_str().unwrap(),
        "-o",
        rw.to_str().unwrap(),
    ]);
    let r = rw.to_str().unwrap();
    s::assert_clean_error(
        &common::regraft(&["export", r, "-o", o]),
        &[r, "checkpoint"],
    );
    assert_nothing_written(&out_dir, &out, &[]);
    let missing = d.join("no-such-run");
    let m = missing.to_str().unwrap();
    s::assert_clean_error(&common::regraft(&["export", m, "-o", o]), &[m]);
    assert_nothing_written(&out_dir, &out, &[]);

    // A trained run, validated on a held-out quarter of 200 digits.
    let small = d.join("digits_200.npz");
    s::write_npz(&small, &s::head(&s::load("digits_train"), 200));
    let run = d.join("run");
    s::train(
        &s::model("mlp"),
        &small,
        &["--val-fraction", "0.25", "--epochs", "1"],
        &run,
    );
    let r = run.to_str().unwrap();

    // Validation data of the wrong shape (MNIST-1D has 40 features, the MLP takes 64).
    let wrong = s::data("mnist1d_test");
    let w = wrong.to_str().unwrap();
    s::assert_clean_error(
        &common::regraft(&["export", r, "-o", o, "--val", w]),
        &[w, "[40]", "64"],
    );
    assert_nothing_written(&out_dir, &out, &[]);

    // Labels out of range (10 and -1 for 10 classes), a file that is no .npz, one that
    // does not exist.
    let mut bad = s::head(&s::load("digits_val"), 50);
    for (label, name) in [(10i64, "label10.npz"), (-1, "label-1.npz")] {
        if let regraft::runtime::data::Labels::Classes(y) = &mut bad.y {
            y[7] = label;
        }
        let p = d.join(name);
        s::write_npz(&p, &bad);
        let ps = p.to_str().unwrap();
        let msg = format!("label {label} of sample 7");
        s::assert_clean_error(
            &common::regraft(&["export", r, "-o", o, "--val", ps]),
            &[ps, &msg, "10 classes"],
        );
        assert_nothing_written(&out_dir, &out, &[]);
    }
    let junk = d.join("junk.npz");
    std::fs::write(&junk, b"not a zip file").unwrap();
    let j = junk.to_str().unwrap();
    s::assert_clean_error(&common::regraft(&["export", r, "-o", o, "--val", j]), &[j]);
    let gone = d.join("gone.npz");
    let g = gone.to_str().unwrap();
    s::assert_clean_error(&common::regraft(&["export", r, "-o", o, "--val", g]), &[g]);
    assert_nothing_written(&out_dir, &out, &[]);

    // Flags: unknown --outputs names, calibration, predictive.
    for (flags, needles) in [
        (vec!["--outputs", "logits,foo"], vec!["--outputs", "'foo'"]),
        (vec!["--outputs", ","], vec!["--outputs"]),
        (
            vec!["--calibrate", "isotonic"],
            vec!["--calibrate", "isotonic"],
        ),
        (
            vec!["--predictive", "sample"],
            vec!["--predictive", "sample"],
        ),
        (vec!["--predictive", "mc:0"], vec!["--predictive"]),
        (vec!["--predictive", "mc:4"], vec!["--predictive"]),
    ] {
        let mut args = vec!["export", r, "-o", o];
        args.extend(&flags);
        s::assert_clean_error(&common::regraft(&args), &needles);
        assert_nothing_written(&out_dir, &out, &[]);
    }

    // Temperature scaling without validation data; --calibrate none needs none.
    let noval = d.join("run-noval");
    s::train(&s::model("mlp"), &small, &["--epochs", "1"], &noval);
    let nv = noval.to_str().unwrap();
    s::assert_clean_error(&common::regraft(&["export", nv, "-o", o]), &["--val"]);
    assert_nothing_written(&out_dir, &out, &[]);
    s::regraft_ok(&["export", nv, "-o", o, "--calibrate", "none"]);
    assert_nothing_written(&out_dir, &out.with_extension("none"), &["model.onnx"]);

    // The same path takes a good export: the refusals were not about the path.
    std::fs::remove_file(&out).unwrap();
    s::regraft_ok(&["export", r, "-o", o]);
    assert_nothing_written(&out_dir, &out.with_extension("none"), &["model.onnx"]);
}
