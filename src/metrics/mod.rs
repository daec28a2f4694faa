//! Classification metrics as the papers report them: Top-1, Top-5, NLL, NLL variance
//! (population variance of the per-sample NLL), ECE (equal-width confidence bins, L1)
//! and the Brier score. All take probabilities or logits row-major [N, C].

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

/// All metrics from probabilities `p` [N, C] (rows sum to 1) and labels.
pub fn from_probs(p: &[f64], c: usize, y: &[i64], bins: usize) -> Metrics {
    let n = y.len();
    let (mut top1, mut top5, mut brier) = (0usize, 0usize, 0.0f64);
    let mut nll = Vec::with_capacity(n);
    let mut bin_conf = vec![0.0f64; bins];
    let mut bin_acc = vec![0.0f64; bins];
    let mut bin_n = vec![0usize; bins];
    for (row, &label) in p.chunks_exact(c).zip(y) {
        let label = label as usize;
        let py = row[label];
        nll.push(-(py.max(1e-300)).ln());
        // Rank of the true class: how many classes have strictly higher probability.
        let higher = row.iter().filter(|&&v| v > py).count();
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
        top1 += (pred == label) as usize;
        top5 += (higher < 5) as usize;
        brier += row
            .iter()
            .enumerate()
            .map(|(k, &v)| (v - if k == label { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>();
        let conf = row[pred];
        // Bins (i/B, (i+1)/B]; a confidence of exactly 0 goes to the first bin.
        let b = ((conf * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        bin_conf[b] += conf;
        bin_acc[b] += (pred == label) as usize as f64;
        bin_n[b] += 1;
    }
    let nf = n.max(1) as f64;
    let mean_nll = nll.iter().sum::<f64>() / nf;
    let var = nll.iter().map(|v| (v - mean_nll).powi(2)).sum::<f64>() / nf;
    let ece = (0..bins)
        .map(|b| (bin_acc[b] - bin_conf[b]).abs())
        .sum::<f64>()
        / nf;
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
