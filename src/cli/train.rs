use std::path::PathBuf;

use super::recipe_flags::RecipeFlags;
use super::rewrite::write_artifacts;
use crate::error::{Error, Result};
use crate::io::load_model;
use crate::runtime::data::{Dataset, load_npz, validate};
use crate::runtime::trainer::{FitOptions, Spec, Trainer, fit};
use crate::runtime::{Device, SessionOptions};
use crate::train::artifacts::build;
use crate::train::loss::LossKind;
use crate::train::recipe::Recipe;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model (ONNX) or a folder written by `regraft rewrite`.
    pub model: PathBuf,
    /// Training data (.npz with x and y).
    #[arg(long)]
    pub data: PathBuf,
    /// Validation data, evaluated every epoch.
    #[arg(long, conflicts_with = "val_fraction")]
    pub val: Option<PathBuf>,
    /// Hold out this fraction of --data for validation instead.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    #[command(flatten)]
    pub recipe: RecipeFlags,
    /// cpu, cuda or cuda:N. CUDA never falls back to the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Intra-op threads (0: ONNX Runtime decides).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Run folder: artifacts, checkpoint.safetensors, metrics.jsonl.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Where a run's data came from (RUN/run.json), so export can refit on the same
/// validation split.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_fraction: Option<f64>,
    pub seed: u64,
    pub device: String,
}

impl RunInfo {
    pub fn load(run: &std::path::Path) -> Option<RunInfo> {
        let s = std::fs::read_to_string(run.join("run.json")).ok()?;
        serde_json::from_str(&s).ok()
    }
    /// The validation split of the run, if it had one.
    pub fn val_dataset(&self) -> Result<Option<Dataset>> {
        match (&self.val, self.val_fraction) {
            (Some(v), _) => Ok(Some(load_npz(v, false)?)),
            (None, Some(f)) => Ok(Some(split(&load_npz(&self.data, false)?, f, self.seed)?.1)),
            _ => Ok(None),
        }
    }
}

/// Split off a validation fraction deterministically (by seed).
pub fn split(ds: &Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
        return Err(Error::flag(
            "--val-fraction",
            format!("must be in (0, 1), not {fraction}"),
        ));
    }
    let order = crate::runtime::trainer::epoch_order(ds.len(), seed ^ 0x5eed_5eed, usize::MAX);
    let nv = ((ds.len() as f64) * fraction).round().max(1.0) as usize;
    if nv >= ds.len() {
        return Err(Error::flag("--val-fraction", "leaves no training data"));
    }
    let (v, t) = order.split_at(nv);
    Ok((ds.subset(t), ds.subset(v)))
}

pub fn run(a: Args) -> Result<()> {
    let (model_path, base): (PathBuf, Option<Recipe>) = if a.model.is_dir() {
        let r = Recipe::load(&a.model.join("recipe.toml"))?;
        (a.model.join("model.onnx"), Some(r))
    } else {
        (a.model.clone(), None)
    };
    let base = if a.resume && a.output.join("recipe.toml").is_file() {
        Some(Recipe::load(&a.output.join("recipe.toml"))?)
    } else {
        base
    };
    let mut recipe = a.recipe.resolve(base)?;
    let model = load_model(&model_path)?;
    // Data is checked before anything is written or trained.
    let float_labels = recipe.loss == LossKind::Mse;
    let data = load_npz(&a.data, float_labels)?;
    if let crate::regularizers::Regularizer::InverseRate(ir) = &mut recipe.regularizer
        && ir.n_train.is_none()
    {
        // n is the size of the training split.
        let held_out = a
            .val_fraction
            .map_or(0, |f| ((data.len() as f64) * f).round().max(1.0) as usize);
        ir.n_train = Some(data.len().saturating_sub(held_out));
    }
    let art = build(&model, &recipe).map_err(|e| e.in_file(&model_path))?;
    validate(
        &data,
        &a.data,
        &art.input,
        &art.input_dims,
        art.classes.filter(|_| !float_labels),
    )?;
    // Cross-regularization learns on a validation split: 10 % of the data unless told.
    let cross = art.val.is_some();
    // (The inverse rate's validated λ uses the same validation machinery.)
    let val_fraction = a.val_fraction.or((cross && a.val.is_none()).then_some(0.1));
    let (train, val) = match (&a.val, val_fraction) {
        (Some(v), _) => {
            let vd = load_npz(v, float_labels)?;
            validate(
                &vd,
                v,
                &art.input,
                &art.input_dims,
                art.classes.filter(|_| !float_labels),
            )?;
            (data, Some(vd))
        }
        (None, Some(f)) => {
            let (t, v) = split(&data, f, recipe.seed)?;
            (t, Some(v))
        }
        (None, None) => (data, None),
    };
    let opts = SessionOptions {
        device: a.device,
        threads: a.threads,
        optimize: true,
    };
    let spec = Spec::from_artifacts(&art, recipe.loss == LossKind::CrossEntropy);
    let mut trainer = Trainer::new(spec, &opts)?;
    write_artifacts(&a.output, &model, &recipe, &art)?;
    let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let info = RunInfo {
        data: abs(&a.data),
        val: a.val.as_ref().map(abs),
        val_fraction,
        seed: recipe.seed,
        device: a.device.to_string(),
    };
    let js = serde_json::to_string_pretty(&info).expect("run info serializes");
    crate::io::write_atomic(&a.output.join("run.json"), |f| {
        std::io::Write::write_all(f, js.as_bytes())
    })?;
    let fo = FitOptions {
        epochs: recipe.epochs,
        batch_size: recipe.batch_size,
        seed: recipe.seed,
        lr: recipe.lr,
        schedule: recipe.schedule.clone(),
        run_dir: a.output.clone(),
        resume: a.resume,
        progress: !a.quiet,
    };
    let logs = fit(&mut trainer, &train, val.as_ref(), &fo)?;
    if let Some(l) = logs.last() {
        eprintln!(
            "done: {} epochs, train loss {:.4}{}; checkpoint in {}",
            l.epoch,
            l.train_loss,
            l.val_accuracy
                .map(|v| format!(", val accuracy {v:.4}"))
                .unwrap_or_default(),
            a.output.display()
        );
    }
    Ok(())
}
