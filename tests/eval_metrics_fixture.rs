//! `regraft::metrics::from_probs` against independent implementations on the same
//! predictions (issue #7): torchmetrics' and netcal's ECE, torch's NLL, NLL variance and
//! Brier, torchmetrics' and numpy's Top-1/Top-5. The fixture
//! (tests/fixtures/metrics/metrics.npz, made by make_metrics_fixture.py beside it) has
//! five sets: random, 100 classes, exact ties, confidences exactly on bin edges, and
//! float32-saturated probabilities (confidence 1.0 with p_y = 0). Its docstring explains
//! the binning conventions and where torchmetrics differs.

use std::collections::BTreeSet;
use std::path::PathBuf;

use regraft::metrics::{Metrics, from_probs};

type Archive = npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>;

const SETS: [&str; 5] = ["random", "c100", "ties", "edges", "saturated"];

fn fixture() -> Archive {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics/metrics.npz");
    npyz::npz::NpzArchive::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by .venv-tools/bin/python tests/fixtures/metrics/make_metrics_fixture.py)",
            path.display()
        )
    })
}

fn read<T: npyz::Deserialize>(ar: &mut Archive, key: &str) -> (Vec<u64>, Vec<T>) {
    let f = ar
        .by_name(key)
        .unwrap()
        .unwrap_or_else(|| panic!("the fixture has no '{key}'"));
    let shape = f.shape().to_vec();
    (shape, f.into_vec::<T>().unwrap())
}

fn scalar(ar: &mut Archive, key: &str) -> f64 {
    let (shape, v) = read::<f64>(ar, key);
    assert!(shape.is_empty() && v.len() == 1, "'{key}' is not a scalar");
    v[0]
}

fn has(ar: &Archive, key: &str) -> bool {
    ar.array_names().any(|n| n == key)
}

struct Set {
    name: &'static str,
    m: Metrics,
}

fn metrics_of(ar: &mut Archive, name: &'static str) -> Set {
    let (shape, p) = read::<f32>(ar, &format!("{name}__probs"));
    let (_, y) = read::<i64>(ar, &format!("{name}__labels"));
    let (_, bins) = read::<i64>(ar, &format!("{name}__bins"));
    assert_eq!(shape.len(), 2);
    assert_eq!(shape[0] as usize, y.len());
    let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let m = from_probs(&p, shape[1] as usize, &y, bins[0] as usize);
    assert_eq!(m.n, y.len());
    Set { name, m }
}

/// |got − want| ≤ 1e-6 · max(1, |want|) (the saturated set's NLL is ~40, its variance ~2e4).
fn close(set: &str, what: &str, got: f64, want: f64) {
    let tol = 1e-6 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{set}: {what} is {got}, the reference {want} (difference {:e})",
        (got - want).abs()
    );
}

#[test]
fn fixture_lists_only_known_sets() {
    let ar = fixture();
    let names: BTreeSet<&str> = ar
        .array_names()
        .map(|n| n.split("__").next().unwrap())
        .collect();
    let known: BTreeSet<&str> = SETS.into_iter().collect();
    assert_eq!(
        names, known,
        "a set in the fixture is not tested here (or one is missing)"
    );
}

#[test]
fn ece_matches_torchmetrics_and_netcal() {
    let mut ar = fixture();
    for name in SETS {
        let s = metrics_of(&mut ar, name);
        let netcal = scalar(&mut ar, &format!("{name}__ece_netcal"));
        close(s.name, "ECE vs netcal", s.m.ece, netcal);
        // torchmetrics in float64; with confidences of exactly 1.0 moved just below 1 on
        // the saturated set (torchmetrics gives them a bin of their own; see the fixture).
        let tm = scalar(&mut ar, &format!("{name}__ece_torchmetrics"));
        let tm_below = scalar(&mut ar, &format!("{name}__ece_torchmetrics_below_one"));
        close(
            s.name,
            "ECE vs torchmetrics (confidences < 1)",
            s.m.ece,
            tm_below,
        );
        if name == "saturated" {
            assert!(
                (s.m.ece - tm).abs() > 1e-3,
                "saturated: expected the documented difference from torchmetrics' extra bin for 1.0 (regraft {}, torchmetrics {tm})",
                s.m.ece
            );
        } else {
            close(s.name, "ECE vs torchmetrics", s.m.ece, tm);
            // MulticlassCalibrationError itself computes in float32.
            let f32 = scalar(&mut ar, &format!("{name}__ece_torchmetrics_f32"));
            assert!(
                (s.m.ece - f32).abs() <= 1e-5,
                "{name}: ECE {} vs torchmetrics float32 {f32}",
                s.m.ece
            );
        }
        // The edges set tells the conventions apart: bins closed on the right (Guo et
        // al.'s code) give a different value there.
        let right = scalar(&mut ar, &format!("{name}__ece_right_closed"));
        if name == "edges" {
            assert!(
                (s.m.ece - right).abs() > 1e-3,
                "edges: ECE {} equals the right-closed {right}",
                s.m.ece
            );
        }
    }
}

#[test]
fn nll_variance_and_brier_match_torch() {
    let mut ar = fixture();
    for name in SETS {
        let s = metrics_of(&mut ar, name);
        close(
            s.name,
            "NLL",
            s.m.nll,
            scalar(&mut ar, &format!("{name}__nll")),
        );
        close(
            s.name,
            "NLL variance",
            s.m.nll_variance,
            scalar(&mut ar, &format!("{name}__nll_variance")),
        );
        close(
            s.name,
            "Brier",
            s.m.brier,
            scalar(&mut ar, &format!("{name}__brier")),
        );
    }
}

#[test]
fn top1_top5_match_numpy_and_torchmetrics() {
    let mut ar = fixture();
    let mut with_torchmetrics = 0;
    for name in SETS {
        let s = metrics_of(&mut ar, name);
        close(
            s.name,
            "Top-1",
            s.m.top1,
            scalar(&mut ar, &format!("{name}__top1")),
        );
        close(
            s.name,
            "Top-5",
            s.m.top5,
            scalar(&mut ar, &format!("{name}__top5")),
        );
        if has(&ar, &format!("{name}__top1_torchmetrics")) {
            with_torchmetrics += 1;
            close(
                s.name,
                "Top-1 vs torchmetrics",
                s.m.top1,
                scalar(&mut ar, &format!("{name}__top1_torchmetrics")),
            );
            close(
                s.name,
                "Top-5 vs torchmetrics",
                s.m.top5,
                scalar(&mut ar, &format!("{name}__top5_torchmetrics")),
            );
        }
        // Ties are broken by class index, never in the label's favour.
        let optimistic = scalar(&mut ar, &format!("{name}__top5_optimistic"));
        if name == "ties" || name == "saturated" {
            assert!(
                (s.m.top5 - optimistic).abs() > 1e-3,
                "{name}: Top-5 {} counts ties for the label",
                s.m.top5
            );
        }
    }
    assert!(
        with_torchmetrics >= 2,
        "the tie-free sets carry torchmetrics' Top-k"
    );
}
