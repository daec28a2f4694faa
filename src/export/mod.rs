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

/// The MC predictive of a cross-noise run: K fixed noise draws at every noise site
/// with the learned σ, the input replicated K times and the probabilities averaged
/// inside the graph. The draws are baked into the model, so its outputs are
/// deterministic and identical on every runtime. Its "logits" output is log p̄.
pub fn mc_graph(run: &Run, k: usize) -> Result<(Graph, String)> {
    let crate::regularizers::Regularizer::CrossNoise(cfg) = &run.recipe.regularizer else {
        return Err(Error::flag(
            "--predictive mc:K",
            "needs a run trained with --regularizer cross-noise",
        ));
    };
    let (mut g, logits) = inference_graph(run)?;
    let input = g
        .real_inputs()
        .next()
        .map(|i| i.name().to_string())
        .ok_or_else(|| Error::msg("the model has no input"))?;
    let rank = crate::ir::infer::infer(&g).rank(&input).unwrap_or(2);
    crate::regularizers::noise::replicate_input(&mut g, &input, k, rank)?;
    let sites = crate::regularizers::noise::select_sites(&g, cfg.layers.as_deref(), &logits)?;
    let state = &run.state;
    // A checkpoint tensor of the wrong size is refused by `insert`.
    let log_sigma = |site: &str, n: usize| -> Vec<f32> {
        state
            .get(&crate::regularizers::noise::param_name(site))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| vec![cfg.init_sigma.ln() as f32; n])
    };
    crate::regularizers::noise::insert(
        &mut g,
        &sites,
        cfg.per_channel,
        &log_sigma,
        crate::regularizers::noise::Draw::Fixed {
            k,
            seed: run.recipe.seed,
        },
    )?;
    let opset = g.opset();
    let mut b = Builder::new(&g, "mc-predictive");
    b.prefix = "mc/".into();
    let p = b.op_a("Softmax", &[&logits], vec![attr_int("axis", 1)]);
    let shape = b.op("Shape", &[&logits]);
    let one = b.ints(&[1]);
    let c = b.op_a("Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
    let head = b.ints(&[k as i64, -1]);
    let s3 = b.op_a("Concat", &[&head, &c], vec![attr_int("axis", 0)]);
    let p3 = b.op("Reshape", &[&p, &s3]);
    let pbar = crate::train::loss::reduce_mean(&mut b, opset, &p3, &[0]);
    let lp = b.op("Log", &[&pbar]);
    b.patch.replace.push((logits.clone(), lp));
    g.apply(b.finish())?;
    Ok((g, logits))
}

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, Dim, ModelProto, StringStringEntryProto, attr_int, value_info};
use crate::runtime::checkpoint;
use crate::runtime::data::{Dataset, validate};
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

/// Check a dataset's sample shape against a model's only data input (the labels are
/// checked once the number of classes is known), so that a mismatch is reported in one
/// line naming the file instead of as an ONNX Runtime error.
pub fn check_data(model: &ModelProto, ds: &Dataset, path: &Path) -> Result<()> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::msg("the model has no graph"))?;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let ins: Vec<_> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name()))
        .collect();
    let [input] = ins.as_slice() else {
        return Err(Error::msg(format!(
            "the model has {} data inputs; regraft evaluates models with exactly one",
            ins.len()
        )));
    };
    let dims = crate::proto::tensor_type(input)
        .and_then(|t| t.1)
        .unwrap_or_default();
    validate(ds, path, input.name(), &dims, None)
}

/// Class labels must index the model's `c` outputs.
pub fn check_labels(y: &[i64], c: usize, path: &Path) -> Result<()> {
    match y
        .iter()
        .enumerate()
        .find(|&(_, &v)| v < 0 || v as usize >= c)
    {
        Some((i, &bad)) => Err(Error::file(
            path,
            format!(
                "label {bad} of sample {i} is out of range: the model has {c} classes (0..{})",
                c.saturating_sub(1)
            ),
        )),
        None => Ok(()),
    }
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
        // The norm split (cross-norm) is folded: w = ρ·v/‖v‖ with the learned ρ.
        let data = match run.state.get(&crate::regularizers::norm::param_name(name)) {
            Some((_, rho)) => crate::regularizers::norm::fold(data, rho[0]),
            None => data.clone(),
        };
        *t = crate::proto::tensor::<f32>(name, &dims, &data);
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
    // The scaled logits take over the name `logits` (and every consumer of it). Nodes of
    // this same patch that read `logits` would get the unscaled value (that is how a
    // patch refers to what it replaces), so the Softmax below reads `scaled`.
    let scaled = if t != 1.0 {
        let tv = b.scalar_of(DataType::Float as i32, t);
        let d = b.op("Div", &[logits, &tv]);
        b.patch.replace.push((logits.to_string(), d.clone()));
        d
    } else {
        logits.to_string()
    };
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
                b.node_to("Softmax", &[&scaled], &[&p], vec![attr_int("axis", 1)]);
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
