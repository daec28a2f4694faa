use std::path::PathBuf;

use crate::error::Result;
use crate::io::{External, load_model, save_model};
use crate::train::grad::{GradOptions, grad_graph};
use crate::train::loss::LossKind;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The forward model (ONNX).
    pub model: PathBuf,
    /// Loss head to add on the logits.
    #[arg(long, value_enum, default_value = "cross-entropy")]
    pub loss: LossKind,
    /// The logits value (default: the model's only floating-point output).
    #[arg(long)]
    pub logits: Option<String>,
    /// Keep parameters matching this glob fixed (repeatable).
    #[arg(long)]
    pub freeze: Vec<String>,
    /// Where to write the gradient model.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let model = load_model(&a.model)?;
    let opts = GradOptions { loss: a.loss, logits: a.logits, freeze: a.freeze };
    let gg = grad_graph(model, &opts).map_err(|e| e.in_file(&a.model))?;
    save_model(&gg.graph.to_model(), &a.output, &External::Auto)?;
    eprintln!(
        "wrote {}: outputs {} and {} gradients",
        a.output.display(),
        gg.head.loss,
        gg.grads.len()
    );
    Ok(())
}
