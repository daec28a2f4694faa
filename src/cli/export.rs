use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::export::{
    OutputKind, check_data, check_labels, finish, inference_graph, load_run, parse_outputs,
    temperature,
};
use crate::io::{External, save_model};
use crate::runtime::data::{Labels, load_npz};
use crate::runtime::{SessionOptions, predict, session};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder written by `regraft train`.
    pub run: PathBuf,
    /// Where to write the model (default: RUN/model.export.onnx).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// temperature (fit T on the validation split) or none.
    #[arg(long, default_value = "temperature")]
    pub calibrate: String,
    /// deterministic, or mc:K (average the probabilities of K noise draws in the graph).
    #[arg(long, default_value = "deterministic")]
    pub predictive: String,
    /// Outputs, comma-separated: logits, probs.
    #[arg(long, default_value = "logits,probs")]
    pub outputs: String,
    /// Validation data for the temperature (default: the run's validation source).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Skip the cross-check of the exported model on tract-onnx.
    #[arg(long)]
    pub no_verify: bool,
}

pub fn run(a: Args) -> Result<()> {
    // Every flag is checked before anything is computed or written.
    let outputs = parse_outputs(&a.outputs)?;
    let calibrate = match a.calibrate.as_str() {
        "temperature" => true,
        "none" => false,
        other => {
            return Err(Error::flag(
                "--calibrate",
                format!("unknown calibration '{other}' (temperature, none)"),
            ));
        }
    };
    let mc: Option<usize> = match a.predictive.as_str() {
        "deterministic" => None,
        p => match p.strip_prefix("mc:").map(str::parse::<usize>) {
            Some(Ok(k)) if k >= 1 => Some(k),
            _ => {
                return Err(Error::flag(
                    "--predictive",
                    format!("'{p}' is not deterministic or mc:K with K ≥ 1"),
                ));
            }
        },
    };
    let run = load_run(&a.run)?;
    // A regression run (MSE) has no class probabilities: no temperature, no `probs`.
    let (calibrate, outputs) = if run.recipe.loss == crate::train::loss::LossKind::Mse {
        if a.calibrate == "temperature" || outputs.contains(&OutputKind::Probs) {
            eprintln!(
                "regression run (MSE): exporting its outputs as they are, without temperature or probabilities"
            );
        }
        (false, vec![OutputKind::Logits])
    } else {
        (calibrate, outputs)
    };
    let (g, logits) = match mc {
        Some(k) => crate::export::mc_graph(&run, k)?,
        None => inference_graph(&run)?,
    };
    let mut t = 1.0;
    let mut meta = vec![("regraft.recipe".to_string(), run.recipe.to_toml())];
    if calibrate {
        // Validation data only when it is used: `--calibrate none` works on a run whose
        // data has moved.
        let need = || {
            Error::flag(
                "--calibrate temperature",
                "needs validation data: pass --val V.npz (the run had none)",
            )
        };
        let (ds, path, what) = match &a.val {
            Some(v) => (load_npz(v, false)?, v.clone(), v.display().to_string()),
            None => {
                let info = crate::cli::train::RunInfo::load(&a.run).ok_or_else(need)?;
                let ds = info.val_dataset()?.ok_or_else(need)?;
                (
                    ds,
                    info.val.clone().unwrap_or_else(|| info.data.clone()),
                    "the run's validation split".to_string(),
                )
            }
        };
        let model = g.to_model();
        check_data(&model, &ds, &path)?;
        let Labels::Classes(y) = &ds.y else {
            unreachable!("class labels")
        };
        let bytes = prost::Message::encode_to_vec(&model);
        let mut s = session(&bytes, &SessionOptions::default())?;
        let (z, c) = predict(&mut s, &ds, 512, None)?;
        check_labels(y, c, &path)?;
        let (fit_t, before, after) = temperature::fit(&z, c, y);
        t = fit_t;
        meta.push(("regraft.temperature".into(), format!("{t}")));
        meta.push((
            "regraft.val_nll".into(),
            serde_json::json!({"before": before, "after": after}).to_string(),
        ));
        eprintln!("temperature {t:.4}: validation NLL {before:.4} → {after:.4} ({what})");
    }
    let g = finish(g, &logits, t, &outputs, meta)?;
    let model = g.to_model();
    let bytes = prost::Message::encode_to_vec(&model);
    if !a.no_verify {
        verify(&bytes, &g)?;
    }
    let out = a.output.unwrap_or_else(|| a.run.join("model.export.onnx"));
    save_model(&model, &out, &External::Auto)?;
    let names: Vec<&str> = outputs
        .iter()
        .map(|o| {
            if *o == OutputKind::Logits {
                "logits"
            } else {
                "probs"
            }
        })
        .collect();
    eprintln!("wrote {} (outputs: {})", out.display(), names.join(", "));
    Ok(())
}

/// The exported model must give the same outputs on ORT and tract (within 1e-5).
fn verify(bytes: &[u8], g: &crate::ir::Graph) -> Result<()> {
    let input = g
        .real_inputs()
        .next()
        .ok_or_else(|| Error::msg("the exported model has no input"))?;
    let dims: Vec<usize> = crate::proto::tensor_type(input)
        .and_then(|t| t.1)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            crate::proto::Dim::Fixed(v) if i > 0 => *v as usize,
            _ => {
                if i == 0 {
                    4
                } else {
                    1
                }
            }
        })
        .collect();
    let n: usize = dims.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32) / 1000.0)
        .collect();
    let mut s = session(bytes, &SessionOptions::default())?;
    let names: Vec<String> = s.outputs().iter().map(|o| o.name().to_string()).collect();
    let t = ort::value::Tensor::from_array((dims.clone(), x.clone()))?;
    let outs = s.run(ort::inputs![input.name() => t])?;
    let tr = crate::runtime::tract::run(bytes, &x, &dims)?;
    for (k, name) in names.iter().enumerate() {
        let (_, a) = outs[name.as_str()].try_extract_tensor::<f32>()?;
        let b = &tr[k].1;
        let worst = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs() / (1.0 + q.abs()))
            .fold(0.0f32, f32::max);
        if a.len() != b.len() || worst > 1e-5 {
            return Err(Error::Runtime(format!(
                "output '{name}' differs between ONNX Runtime and tract (max relative difference {worst:e})"
            )));
        }
    }
    Ok(())
}
