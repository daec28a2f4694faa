use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders or exported models to compare.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Test data (.npz).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    #[arg(long)]
    pub json: bool,
}

/// The five columns of the inverse-rate paper's Table 1, with which way is better.
pub const COLUMNS: [(&str, bool); 5] = [
    ("Top-1", true),
    ("Top-5", true),
    ("NLL", false),
    ("Var", false),
    ("ECE", false),
];

pub fn column(m: &Metrics, i: usize) -> f64 {
    [m.top1, m.top5, m.nll, m.nll_variance, m.ece][i]
}

/// For each run, the number of columns in which it is the best (ties count for all).
pub fn wins(ms: &[Metrics]) -> Vec<[bool; 5]> {
    let mut out = vec![[false; 5]; ms.len()];
    for (i, &(_, higher)) in COLUMNS.iter().enumerate() {
        let vals: Vec<f64> = ms.iter().map(|m| column(m, i)).collect();
        let best = if higher {
            vals.iter().cloned().fold(f64::MIN, f64::max)
        } else {
            vals.iter().cloned().fold(f64::MAX, f64::min)
        };
        for (k, v) in vals.iter().enumerate() {
            out[k][i] = (*v - best).abs() <= 1e-12;
        }
    }
    out
}

pub fn run(a: Args) -> Result<()> {
    if a.bins == 0 {
        return Err(Error::flag("--bins", "must be at least 1"));
    }
    let mut ms = vec![];
    for r in &a.runs {
        let (m, ..) = super::eval::evaluate(r, &a.data, a.bins).map_err(|e| match e {
            e @ Error::File { .. } => e,
            e => e.in_file(r),
        })?;
        ms.push(m);
    }
    let w = wins(&ms);
    if a.json {
        let rows: Vec<_> = a
            .runs
            .iter()
            .zip(&ms)
            .zip(&w)
            .map(|((r, m), w)| serde_json::json!({"run": r, "metrics": m, "wins": w.iter().filter(|&&b| b).count()}))
            .collect();
        return super::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).expect("serializes")
        ));
    }
    let mut text = String::from(
        "| run | Top-1 | Top-5 | NLL | Var | ECE | wins |\n|---|---|---|---|---|---|---|\n",
    );
    for ((r, m), w) in a.runs.iter().zip(&ms).zip(&w) {
        let cell = |i: usize, v: f64| {
            if w[i] {
                format!("**{v:.4}**")
            } else {
                format!("{v:.4}")
            }
        };
        text += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.display(),
            cell(0, m.top1),
            cell(1, m.top5),
            cell(2, m.nll),
            cell(3, m.nll_variance),
            cell(4, m.ece),
            w.iter().filter(|&&b| b).count()
        );
    }
    super::emit(&text)
}
