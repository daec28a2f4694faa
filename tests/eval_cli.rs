//! `regraft eval` and `regraft compare` (issue #7): the metrics of a model's own outputs,
//! the reliability diagram as a valid PNG, the comparison table with its win counts, and
//! clean refusals of data that does not fit.

mod common;
mod export_support;

use std::path::{Path, PathBuf};

use export_support as s;
use regraft::metrics::{Metrics, from_probs};

/// An MLP trained for `epochs` on 300 digits (a quarter held out), in `dir/name`.
fn short_run(dir: &Path, name: &str, epochs: &str, lr: &str) -> PathBuf {
    let small = dir.join("digits_300.npz");
    if !small.exists() {
        s::write_npz(&small, &s::head(&s::load("digits_train"), 300));
    }
    let run = dir.join(name);
    s::train(
        &s::model("mlp"),
        &small,
        &["--val-fraction", "0.25", "--epochs", epochs, "--lr", lr],
        &run,
    );
    run
}

fn eval_json(model: &Path, extra: &[&str]) -> Metrics {
    let test = s::data("digits_test");
    let mut args = vec![
        "eval",
        model.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&s::regraft_ok(&args)).unwrap()
}

#[test]
fn eval_scores_the_models_own_outputs() {
    let dir = common::tempdir();
    let run = short_run(dir.path(), "run", "2", "0.05");
    let out = dir.path().join("m.onnx");
    s::regraft_ok(&["export", run.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let ds = s::load("digits_test");
    let regraft::runtime::data::Labels::Classes(y) = &ds.y else {
        unreachable!()
    };
    let mut shape = vec![ds.len()];
    shape.extend(&ds.sample_shape);
    let tr = regraft::runtime::tract::run(&std::fs::read(&out).unwrap(), &ds.x, &shape).unwrap();
    let probs: Vec<f64> = tr[1].1.iter().map(|&v| v as f64).collect();
    for bins in [15usize, 10] {
        let want = from_probs(&probs, 10, y, bins);
        let got = eval_json(&out, &["--bins", &bins.to_string()]);
        assert_eq!(got.n, 300);
        assert_eq!(got.bins, bins);
        for (what, a, b) in [
            ("top1", got.top1, want.top1),
            ("top5", got.top5, want.top5),
            ("nll", got.nll, want.nll),
            ("nll_variance", got.nll_variance, want.nll_variance),
            ("ece", got.ece, want.ece),
            ("brier", got.brier, want.brier),
        ] {
            assert!(
                (a - b).abs() < 1e-5,
                "{what} with {bins} bins: eval {a}, outputs {b}"
            );
        }
    }
    // The run folder is its deterministic model at T = 1: the export without calibration.
    let raw = dir.path().join("raw.onnx");
    s::regraft_ok(&[
        "export",
        run.to_str().unwrap(),
        "-o",
        raw.to_str().unwrap(),
        "--calibrate",
        "none",
    ]);
    let (a, b) = (eval_json(&run, &[]), eval_json(&raw, &[]));
    assert_eq!(a.top1, b.top1);
    assert!(
        (a.nll - b.nll).abs() < 1e-5 && (a.ece - b.ece).abs() < 1e-5,
        "{a:?} vs {b:?}"
    );
}

#[test]
fn eval_plot_writes_a_valid_png() {
    let dir = common::tempdir();
    let run = short_run(dir.path(), "run", "1", "0.05");
    let png_path = dir.path().join("plots/rel.png");
    let test = s::data("digits_test");
    let stdout = s::regraft_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--plot",
        png_path.to_str().unwrap(),
    ]);
    assert!(stdout.contains("ECE"), "{stdout}");
    let bytes = std::fs::read(&png_path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    // The first chunk is IHDR: length 13, 480 x 560, 8-bit RGB.
    assert_eq!(&bytes[8..16], b"\x00\x00\x00\x0dIHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (480, 560), "width, height");
    assert_eq!(
        (bytes[24], bytes[25]),
        (8, 2),
        "bit depth 8, colour type RGB"
    );
    // It decodes (CRCs, zlib stream) and draws the accuracy bars and the diagonal.
    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .unwrap();
    let mut img = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut img).unwrap();
    assert_eq!((info.width, info.height), (480, 560));
    let has = |c: [u8; 3]| img.chunks_exact(3).any(|p| p == c);
    assert!(
        has([70, 110, 200]) && has([200, 60, 60]),
        "no bars or no diagonal"
    );
    assert!(bytes.ends_with(b"IEND\xae\x42\x60\x82"));
}

#[test]
fn compare_prints_a_table_with_win_counts() {
    let dir = common::tempdir();
    let a = short_run(dir.path(), "a", "1", "0.01");
    let b = short_run(dir.path(), "b", "4", "0.1");
    let c = dir.path().join("b.onnx");
    s::regraft_ok(&["export", b.to_str().unwrap(), "-o", c.to_str().unwrap()]);
    let entries = [a, b, c];
    let ms: Vec<Metrics> = entries.iter().map(|e| eval_json(e, &[])).collect();
    let test = s::data("digits_test");
    let mut args = vec!["compare"];
    args.extend(entries.iter().map(|e| e.to_str().unwrap()));
    args.extend(["--data", test.to_str().unwrap()]);
    let table = s::regraft_ok(&args);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + entries.len(), "{table}");
    assert_eq!(lines[0], "| run | Top-1 | Top-5 | NLL | Var | ECE | wins |");
    assert_eq!(lines[1], "|---|---|---|---|---|---|---|");
    // Per column, which entries are best (higher Top-k, lower NLL, Var, ECE).
    let col = |m: &Metrics, i: usize| [m.top1, m.top5, m.nll, m.nll_variance, m.ece][i];
    let mut total = 0;
    for (k, line) in lines[2..].iter().enumerate() {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 7, "{line}");
        assert_eq!(cells[0], entries[k].display().to_string());
        let mut bold = 0;
        for i in 0..5 {
            let cell = cells[1 + i];
            let v: f64 = cell.trim_matches('*').parse().unwrap();
            assert!(
                (v - col(&ms[k], i)).abs() <= 5e-5,
                "{line}: column {i} vs eval {:?}",
                ms[k]
            );
            let vals: Vec<f64> = ms.iter().map(|m| col(m, i)).collect();
            let best = if i < 2 {
                vals.iter().cloned().fold(f64::MIN, f64::max)
            } else {
                vals.iter().cloned().fold(f64::MAX, f64::min)
            };
            let wins = (col(&ms[k], i) - best).abs() <= 1e-12;
            assert_eq!(cell.starts_with("**"), wins, "{line}: column {i}");
            bold += wins as usize;
        }
        assert_eq!(cells[6], bold.to_string(), "{line}: wins");
        total += bold;
    }
    assert!(total >= 5, "every column has a winner:\n{table}");
    // The trained-longer run wins at least one column against the one-epoch run.
    assert!(!lines[3].ends_with("| 0 |"), "{table}");

    // --json carries the same metrics and wins.
    args.push("--json");
    let js: serde_json::Value = serde_json::from_str(&s::regraft_ok(&args)).unwrap();
    for (k, row) in js.as_array().unwrap().iter().enumerate() {
        let m: Metrics = serde_json::from_value(row["metrics"].clone()).unwrap();
        assert_eq!(m, ms[k]);
        let cells: Vec<&str> = lines[2 + k]
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(row["wins"].as_u64().unwrap().to_string(), cells[6]);
    }
}

#[test]
fn eval_and_compare_refuse_bad_input_cleanly() {
    let dir = common::tempdir();
    let d = dir.path();
    let run = short_run(d, "run", "1", "0.05");
    let r = run.to_str().unwrap();
    let model = d.join("m.onnx");
    let m = model.to_str().unwrap();
    s::regraft_ok(&["export", r, "-o", m]);
    let test = s::data("digits_test");
    let t = test.to_str().unwrap();
    let wrong = s::data("mnist1d_test");
    let w = wrong.to_str().unwrap();
    let png_path = d.join("rel.png");
    let p = png_path.to_str().unwrap();

    // Data of the wrong shape, for an exported model and for a run folder; no plot.
    for target in [m, r] {
        s::assert_clean_error(
            &common::regraft(&["eval", target, "--data", w, "--plot", p]),
            &[w, "[40]", "64"],
        );
        assert!(!png_path.exists());
    }
    s::assert_clean_error(
        &common::regraft(&["compare", r, m, "--data", w]),
        &[w, "[40]"],
    );
    // Labels out of range.
    let mut bad = s::head(&s::load("digits_test"), 20);
    if let regraft::runtime::data::Labels::Classes(y) = &mut bad.y {
        y[3] = 12;
    }
    let badp = d.join("bad.npz");
    s::write_npz(&badp, &bad);
    let b = badp.to_str().unwrap();
    s::assert_clean_error(
        &common::regraft(&["eval", m, "--data", b]),
        &[b, "label 12 of sample 3"],
    );
    // Bins.
    s::assert_clean_error(
        &common::regraft(&["eval", m, "--data", t, "--bins", "0"]),
        &["--bins"],
    );
    s::assert_clean_error(
        &common::regraft(&["compare", r, m, "--data", t, "--bins", "0"]),
        &["--bins"],
    );
    s::assert_clean_error(
        &common::regraft(&["eval", m, "--data", t, "--bins", "500", "--plot", p]),
        &["--bins", "500"],
    );
    assert!(!png_path.exists());
    // A run folder without a checkpoint, a model that does not exist.
    let rw = d.join("rewritten");
    s::regraft_ok(&[
        "rewrite",
        s::model("mlp").to_str().unwrap(),
        "-o",
        rw.to_str().unwrap(),
    ]);
    let rws = rw.to_str().unwrap();
    s::assert_clean_error(
        &common::regraft(&["eval", rws, "--data", t]),
        &[rws, "checkpoint"],
    );
    s::assert_clean_error(
        &common::regraft(&["compare", r, rws, "--data", t]),
        &[rws, "checkpoint"],
    );
    let gone = d.join("gone.onnx");
    let g = gone.to_str().unwrap();
    s::assert_clean_error(&common::regraft(&["eval", g, "--data", t]), &[g]);
}
