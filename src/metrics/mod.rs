//! Classification metrics as the papers report them: Top-1, Top-5, NLL, NLL variance
//! (population variance of the per-sample NLL), ECE (equal-width confidence bins, L1)
//! and the Brier score. All take probabilities or logits row-major [N, C].
//!
//! Conventions (checked against torchmetrics, netcal, torch and numpy by
//! `tests/eval_metrics_fixture.rs`, fixture made by
//! `tests/fixtures/metrics/make_metrics_fixture.py`):
//! - The prediction is the first class holding the row's maximum (as `torch.max`,
//!   `numpy.argmax`); its probability is the confidence.
//! - Top-k: the label is among the first k classes of a stable descending sort of the
//!   row, i.e. ties are broken by the lower class index, the same way as the prediction,
//!   so Top-1 is the accuracy of the prediction.
//! - NLL: −ln max(p_y, 1e-300), so a saturated wrong prediction (p_y exactly 0 in
//!   float32) counts 690.8 rather than infinity.
//! - ECE: B bins [i/B, (i+1)/B), the last one closed: bin = min(⌊cB⌋, B − 1); the sum
//!   over bins of |Σ(correct − confidence)| / N. This is torchmetrics' binning
//!   (`MulticlassCalibrationError`, `torch.bucketize(right=True)`), except that
//!   torchmetrics puts a confidence of exactly 1.0 into an extra bin of its own, and
//!   netcal's (`netcal.metrics.ECE`, numpy histograms) exactly. Guo et al.'s
//!   temperature-scaling code closes the bins on the right instead; the conventions
//!   differ only for confidences exactly on an inner edge.
//! - Brier: the mean over samples of Σ_k (p_k − [k = y])², in [0, 2].

use serde::{Deserialize, Serialize};

/// Softmax of each row of logits, computed stably in f64.
pub fn softmax(logits: &[f32], c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(c) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = row.iter().map(|&z| (z as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.into_iter().map(|v| v / s));
    }
    out
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: &[f32], c: usize, y: &[i64]) -> f64 {
    let hits = logits
        .chunks_exact(c)
        .zip(y)
        .filter(|(row, label)| argmax(row) == **label as usize)
        .count();
    hits as f64 / y.len().max(1) as f64
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub top1: f64,
    pub top5: f64,
    pub nll: f64,
    /// Population variance of the per-sample NLL.
    pub nll_variance: f64,
    pub ece: f64,
    pub brier: f64,
    pub bins: usize,
}

/// The ECE bin of a confidence in [0, 1]: bins [i/B, (i+1)/B), the last one closed.
pub fn ece_bin(conf: f64, bins: usize) -> usize {
    ((conf * bins as f64).floor().max(0.0) as usize).min(bins - 1)
}

/// The prediction of a row: the first class holding its maximum.
pub fn predicted(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > row[b] { i } else { b })
}

/// All metrics from probabilities `p` [N, C] (rows sum to 1) and labels.
pub fn from_probs(p: &[f64], c: usize, y: &[i64], bins: usize) -> Metrics {
    let n = y.len();
    let (mut top1, mut top5, mut brier) = (0usize, 0usize, 0.0f64);
    let mut nll = Vec::with_capacity(n);
    let mut bin_gap = vec![0.0f64; bins];
    for (row, &label) in p.chunks_exact(c).zip(y) {
        let label = label as usize;
        let py = row[label];
        nll.push(-(py.max(1e-300)).ln());
        // Position of the label in a stable descending sort of the row.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(k, &v)| v > py || (v == py && k < label))
            .count();
        let pred = predicted(row);
        debug_assert_eq!(rank == 0, pred == label);
        top1 += (pred == label) as usize;
        top5 += (rank < 5) as usize;
        brier += row
            .iter()
            .enumerate()
            .map(|(k, &v)| (v - if k == label { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>();
        let conf = row[pred];
        bin_gap[ece_bin(conf, bins)] += (pred == label) as usize as f64 - conf;
    }
    let nf = n.max(1) as f64;
    let mean_nll = nll.iter().sum::<f64>() / nf;
    let var = nll.iter().map(|v| (v - mean_nll).powi(2)).sum::<f64>() / nf;
    let ece = bin_gap.iter().map(|g| g.abs()).sum::<f64>() / nf;
    Metrics {
        n,
        top1: top1 as f64 / nf,
        top5: top5 as f64 / nf,
        nll: mean_nll,
        nll_variance: var,
        ece,
        brier: brier / nf,
        bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_cases() {
        // Two samples, perfect confidence on the right class: NLL 0, ECE 0, Brier 0.
        let p = vec![1.0, 0.0, 0.0, 1.0];
        let m = from_probs(&p, 2, &[0, 1], 15);
        assert_eq!((m.top1, m.nll, m.ece, m.brier), (1.0, 0.0, 0.0, 0.0));
        // Uniform over 4 classes: NLL ln 4, accuracy of arg-max (class 0) 1/2 here,
        // confidence 0.25 in one bin: ECE |0.5 − 0.25| = 0.25.
        let p = vec![0.25; 8];
        let m = from_probs(&p, 4, &[0, 3], 10);
        assert!((m.nll - 4f64.ln()).abs() < 1e-12);
        assert_eq!(m.nll_variance, 0.0);
        assert_eq!(m.top1, 0.5);
        assert_eq!(m.top5, 1.0);
        assert!((m.ece - 0.25).abs() < 1e-12);
        assert!((m.brier - 0.75).abs() < 1e-12);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let p = softmax(&[1000.0, 0.0, -1000.0, 1.0, 2.0, 3.0], 3);
        for r in p.chunks(3) {
            assert!((r.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(p[0] > 0.999);
    }
}

pub mod plot;
