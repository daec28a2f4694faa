//! `regraft export`: a plain inference model from a training run.
//!
//! - The trained parameters and buffers (from the run's checkpoint) become initializers;
//!   loss, labels, optimizer state and validation heads are not part of it.
//! - BatchNormalization runs in inference mode with its running statistics; Dropout goes.
//! - Optionally the temperature T is fitted on the validation split by minimizing NLL (a
//!   1-D convex problem in 1/T; T = 1 is always a candidate, so calibration never makes
//!   the validation NLL worse) and folded into the graph as logits / T.
//! - `metadata_props` records the recipe, T and the validation metrics.

pub mod temperature;

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, Dim, ModelProto, StringStringEntryProto, attr_int, value_info};
use crate::runtime::checkpoint;
use crate::runtime::trainer::CHECKPOINT;
use crate::train::artifacts::to_inference;
use crate::train::loss::find_logits;
use crate::train::recipe::Recipe;

/// Which outputs the exported model has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Logits,
    Probs,
}

pub fn parse_outputs(s: &str) -> Result<Vec<OutputKind>> {
    let mut v = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        v.push(match part {
            "logits" => OutputKind::Logits,
            "probs" => OutputKind::Probs,
            other => {
                return Err(Error::flag(
                    "--outputs",
                    format!("unknown output '{other}' (logits, probs)"),
                ));
            }
        });
    }
    if v.is_empty() {
        return Err(Error::flag(
            "--outputs",
            "name at least one of logits, probs",
        ));
    }
    Ok(v)
}

/// A run folder's pieces needed for export.
pub struct Run {
    pub model: ModelProto,
    pub recipe: Recipe,
    pub state: checkpoint::TensorMap,
}

pub fn load_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "is not a run folder"));
    }
    let ck = dir.join(CHECKPOINT);
    if !ck.is_file() {
        return Err(Error::file(
            dir,
            "has no checkpoint.safetensors: train it first (regraft train ... -o RUN)",
        ));
    }
    let recipe = Recipe::load(&dir.join("recipe.toml"))?;
    let model = crate::io::load_model(dir.join("model.onnx"))?;
    let state = checkpoint::load(&ck)?.tensors;
    Ok(Run {
        model,
        recipe,
        state,
    })
}

/// The deterministic inference graph of a run with its trained weights: outputs the logits.
pub fn inference_graph(run: &Run) -> Result<(Graph, String)> {
    let mut g = Graph::from_model(run.model.clone());
    to_inference(&mut g);
    let logits = find_logits(&g, run.recipe.logits.as_deref())?;
    let inits: HashSet<String> = g
        .initializers
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    for (name, (shape, data)) in &run.state {
        if !inits.contains(name) {
            continue; // optimizer slots and regularization parameters
        }
        let t = g
            .initializers
            .iter_mut()
            .find(|t| t.name() == name)
            .expect("present");
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if t.dims != dims {
            return Err(Error::msg(format!(
                "checkpoint tensor '{name}' has shape {shape:?}, the model's initializer {:?}",
                t.dims
            )));
        }
        *t = crate::proto::tensor::<f32>(name, &dims, data);
    }
    let lv = g.outputs.iter().find(|o| o.name() == logits).cloned();
    g.outputs = vec![lv.unwrap_or_else(|| {
        value_info(
            &logits,
            DataType::Float as i32,
            &[Dim::Param("N".into()), Dim::Param("C".into())],
        )
    })];
    g.remove_dead();
    Ok((g, logits))
}

/// Fold a temperature and choose outputs; records metadata.
pub fn finish(
    mut g: Graph,
    logits: &str,
    t: f64,
    outputs: &[OutputKind],
    meta: Vec<(String, String)>,
) -> Result<Graph> {
    let mut b = Builder::new(&g, "export");
    b.prefix = "export/".into();
    if t != 1.0 {
        // The scaled logits take over the name `logits` (and every consumer of it).
        let tv = b.scalar_of(DataType::Float as i32, t);
        let d = b.op("Div", &[logits, &tv]);
        b.patch.replace.push((logits.to_string(), d));
    }
    let mut outs = vec![];
    for o in outputs {
        match o {
            OutputKind::Logits => outs.push(value_info(
                logits,
                DataType::Float as i32,
                &[Dim::Param("N".into()), Dim::Param("C".into())],
            )),
            OutputKind::Probs => {
                let p = b.fresh_exact("probs");
                b.node_to("Softmax", &[logits], &[&p], vec![attr_int("axis", 1)]);
                outs.push(value_info(
                    &p,
                    DataType::Float as i32,
                    &[Dim::Param("N".into()), Dim::Param("C".into())],
                ));
            }
        }
    }
    g.apply(b.finish())?;
    g.outputs = outs;
    g.remove_dead();
    for (k, v) in meta {
        g.model.metadata_props.retain(|e| e.key() != k);
        g.model.metadata_props.push(StringStringEntryProto {
            key: Some(k),
            value: Some(v),
        });
    }
    g.check("export")?;
    Ok(g)
}
