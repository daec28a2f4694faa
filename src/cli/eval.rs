use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::metrics::{Metrics, from_probs, softmax};
use crate::runtime::data::{Labels, load_npz};
use crate::runtime::{SessionOptions, predict, session};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// An exported model (ONNX) or a run folder (evaluated deterministically, T = 1).
    pub model: PathBuf,
    /// Test data (.npz with x and integer y).
    #[arg(long)]
    pub data: PathBuf,
    /// Number of equal-width confidence bins of the ECE.
    #[arg(long, default_value_t = 15)]
    pub bins: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a reliability diagram (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Class probabilities of a model or run on a dataset (read from `data_path`).
pub fn probabilities(
    model: &std::path::Path,
    data: &crate::runtime::data::Dataset,
    data_path: &std::path::Path,
) -> Result<(Vec<f64>, usize)> {
    let proto = if model.is_dir() {
        let run = crate::export::load_run(model)?;
        let (g, logits) = crate::export::inference_graph(&run)?;
        let g = crate::export::finish(
            g,
            &logits,
            1.0,
            &[crate::export::OutputKind::Logits],
            vec![],
        )?;
        g.to_model()
    } else {
        crate::io::load_model(model)?
    };
    crate::export::check_data(&proto, data, data_path).map_err(|e| e.in_file(model))?;
    let bytes = prost::Message::encode_to_vec(&proto);
    let mut s = session(&bytes, &SessionOptions::default()).map_err(|e| e.in_file(model))?;
    let has_probs = s.outputs().iter().any(|o| o.name() == "probs");
    let (v, c) =
        predict(&mut s, data, 512, has_probs.then_some("probs")).map_err(|e| e.in_file(model))?;
    Ok(if has_probs {
        (v.iter().map(|&p| p as f64).collect(), c)
    } else {
        (softmax(&v, c), c)
    })
}

pub fn evaluate(
    model: &std::path::Path,
    data_path: &std::path::Path,
    bins: usize,
) -> Result<(Metrics, Vec<f64>, usize, Vec<i64>)> {
    if bins == 0 {
        return Err(Error::flag("--bins", "must be at least 1"));
    }
    let ds = load_npz(data_path, false)?;
    let (p, c) = probabilities(model, &ds, data_path)?;
    let Labels::Classes(y) = ds.y else {
        unreachable!("class labels")
    };
    crate::export::check_labels(&y, c, data_path)?;
    Ok((from_probs(&p, c, &y, bins), p, c, y))
}

pub fn run(a: Args) -> Result<()> {
    let max = crate::metrics::plot::MAX_BINS;
    if a.plot.is_some() && a.bins > max {
        return Err(Error::flag(
            "--bins",
            format!("--plot draws at most {max} bins, not {}", a.bins),
        ));
    }
    let (m, p, c, y) = evaluate(&a.model, &a.data, a.bins)?;
    if let Some(path) = &a.plot {
        crate::metrics::plot::reliability_png(path, &p, c, &y, a.bins)?;
    }
    let text = if a.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&m).expect("metrics serialize")
        )
    } else {
        format!(
            "samples   {}\ntop-1     {:.4}\ntop-5     {:.4}\nNLL       {:.4}\nNLL var   {:.4}\nECE       {:.4} ({} bins)\nBrier     {:.4}\n",
            m.n, m.top1, m.top5, m.nll, m.nll_variance, m.ece, m.bins, m.brier
        )
    };
    // A reader that stops early (`| head -1`) ends the output quietly.
    super::emit(&text)?;
    Ok(())
}
