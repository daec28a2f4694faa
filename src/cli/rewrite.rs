use std::path::{Path, PathBuf};

use super::recipe_flags::RecipeFlags;
use crate::error::Result;
use crate::io::{External, load_model, save_model};
use crate::proto::ModelProto;
use crate::runtime::checkpoint::{self, TensorMap};
use crate::train::artifacts::{Artifacts, build};
use crate::train::recipe::Recipe;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The forward model exported from PyTorch (ONNX).
    pub model: PathBuf,
    #[command(flatten)]
    pub recipe: RecipeFlags,
    /// Output folder for train_step.onnx, eval.onnx, state.safetensors and recipe.toml.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Write the artifacts, the initial state, the resolved recipe and the source model.
pub fn write_artifacts(
    dir: &Path,
    model: &ModelProto,
    recipe: &Recipe,
    a: &Artifacts,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::file(dir, e.to_string()))?;
    save_model(
        &a.train.to_model(),
        dir.join("train_step.onnx"),
        &External::Auto,
    )?;
    save_model(&a.eval.to_model(), dir.join("eval.onnx"), &External::Auto)?;
    if let Some(v) = &a.val {
        save_model(
            &v.graph.to_model(),
            dir.join("val_step.onnx"),
            &External::Auto,
        )?;
    }
    save_model(model, dir.join("model.onnx"), &External::Auto)?;
    let init: TensorMap = a
        .state
        .iter()
        .chain(a.val.iter().flat_map(|v| v.state.iter()))
        .map(|e| {
            Ok((
                e.name.clone(),
                (
                    e.dims.iter().map(|&d| d as usize).collect(),
                    crate::proto::tensor_values::<f32>(&e.init)?,
                ),
            ))
        })
        .collect::<Result<_>>()?;
    checkpoint::save(&dir.join("state.safetensors"), &init, None, &[])?;
    let r = recipe.to_toml();
    crate::io::write_atomic(&dir.join("recipe.toml"), |f| {
        std::io::Write::write_all(f, r.as_bytes())
    })
}

pub fn run(a: Args) -> Result<()> {
    let model = load_model(&a.model)?;
    let recipe = a.recipe.resolve(None)?;
    let art = build(&model, &recipe).map_err(|e| e.in_file(&a.model))?;
    write_artifacts(&a.output, &model, &recipe, &art)?;
    eprintln!(
        "wrote {}: train_step.onnx ({} nodes), eval.onnx, state.safetensors ({} tensors), recipe.toml",
        a.output.display(),
        art.train.nodes.len(),
        art.state.len()
    );
    Ok(())
}
