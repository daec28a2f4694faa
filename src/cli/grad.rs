use std::path::PathBuf;

use super::recipe_flags::RecipeFlags;
use crate::error::Result;
use crate::io::{External, load_model, save_model};
use crate::train::grad::{GradOptions, grad_graph};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The forward model (ONNX).
    pub model: PathBuf,
    /// Loss, logits, freeze and regularizer flags (the rest of a recipe is ignored here).
    #[command(flatten)]
    pub recipe: RecipeFlags,
    /// Where to write the gradient model.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    // REGRAFT_TIMINGS=1 prints the phases' wall times to stderr (tools/bench/grad_build).
    let mut lap = Lap::new();
    let model = load_model(&a.model)?;
    lap.done("load");
    let r = a.recipe.resolve(None)?;
    let opts = GradOptions {
        loss: r.loss,
        logits: r.logits,
        freeze: r.freeze,
        regularizer: r.regularizer,
    };
    let gg = grad_graph(model, &opts).map_err(|e| e.in_file(&a.model))?;
    lap.done("build");
    save_model(&gg.graph.into_model(), &a.output, &External::Auto)?;
    lap.done("save");
    eprintln!(
        "wrote {}: outputs {} and {} gradients",
        a.output.display(),
        gg.head.loss,
        gg.grads.len()
    );
    Ok(())
}

/// Phase timer behind `REGRAFT_TIMINGS=1`: one stderr line per phase.
struct Lap(Option<std::time::Instant>);

impl Lap {
    fn new() -> Lap {
        Lap(std::env::var_os("REGRAFT_TIMINGS").map(|_| std::time::Instant::now()))
    }
    fn done(&mut self, phase: &str) {
        if let Some(t) = &mut self.0 {
            eprintln!("regraft timing: {phase} {:.4} s", t.elapsed().as_secs_f64());
            *t = std::time::Instant::now();
        }
    }
}
