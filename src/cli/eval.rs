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

/// Class probabilities of a model or run on a dataset.
pub fn probabilities(model: &std::path::Path, data: &crate::runtime::data::Dataset) -> Result<(Vec<f64>, usize)> {
    let bytes = if model.is_dir() {
        let run = crate::export::load_run(model)?;
        let (g, logits) = crate::export::inference_graph(&run)?;
        let g = crate::export::finish(g, &logits, 1.0, &[crate::export::OutputKind::Logits], vec![])?;
        prost::Message::encode_to_vec(&g.to_model())
    } else {
        prost::Message::encode_to_vec(&crate::io::load_model(model)?)
    };
    let mut s = session(&bytes, &SessionOptions::default()).map_err(|e| e.in_file(model))?;
    let has_probs = s.outputs().iter().any(|o| o.name() == "probs");
    let (v, c) = predict(&mut s, data, 512, has_probs.then_some("probs")).map_err(|e| e.in_file(model))?;
    Ok(if has_probs { (v.iter().map(|&p| p as f64).collect(), c) } else { (softmax(&v, c), c) })
}

pub fn evaluate(model: &std::path::Path, data_path: &std::path::Path, bins: usize) -> Result<(Metrics, Vec<f64>, usize, Vec<i64>)> {
    let ds = load_npz(data_path, false)?;
    let (p, c) = probabilities(model, &ds)?;
    let Labels::Classes(y) = ds.y else { unreachable!("class labels") };
    if let Some((i, &bad)) = y.iter().enumerate().find(|&(_, &v)| v < 0 || v as usize >= c) {
        return Err(Error::file(data_path, format!("label {bad} of sample {i} is out of range for {c} classes")));
    }
    Ok((from_probs(&p, c, &y, bins), p, c, y))
}

pub fn run(a: Args) -> Result<()> {
    if a.bins == 0 {
        return Err(Error::flag("--bins", "must be at least 1"));
    }
    let (m, p, c, y) = evaluate(&a.model, &a.data, a.bins)?;
    if let Some(path) = &a.plot {
        crate::metrics::plot::reliability_png(path, &p, c, &y, a.bins)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m).expect("metrics serialize"));
    } else {
        println!("samples   {}", m.n);
        println!("top-1     {:.4}", m.top1);
        println!("top-5     {:.4}", m.top5);
        println!("NLL       {:.4}", m.nll);
        println!("NLL var   {:.4}", m.nll_variance);
        println!("ECE       {:.4} ({} bins)", m.ece, m.bins);
        println!("Brier     {:.4}", m.brier);
    }
    Ok(())
}
