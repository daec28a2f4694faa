//! Flags that say the same things as a recipe file; flags win over the file.

use std::path::PathBuf;

use crate::error::Result;
use crate::regularizers::{CrossNoise, CrossNorm, InverseRate, LambdaMode, Regularizer};
use crate::train::loss::LossKind;
use crate::train::optim::{OptimizerKind, Schedule};
use crate::train::recipe::Recipe;

#[derive(clap::Args, Debug, Default, Clone)]
pub struct RecipeFlags {
    /// Recipe file (TOML); the flags below override it.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Loss head on the logits.
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    /// The logits value (default: the model's only floating-point output).
    #[arg(long)]
    pub logits: Option<String>,
    /// Keep parameters matching this glob fixed (repeatable).
    #[arg(long)]
    pub freeze: Vec<String>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Turn Nesterov momentum on or off (SGD).
    #[arg(long)]
    pub nesterov: Option<bool>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clipping threshold.
    #[arg(long)]
    pub clip_norm: Option<f32>,
    /// No weight decay on biases and normalization parameters.
    #[arg(long)]
    pub no_decay_1d: bool,
    /// Learning-rate schedule: constant, cosine or step.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Warmup steps of the cosine schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Regularizer: none or inverse-rate.
    #[arg(long)]
    pub regularizer: Option<String>,
    /// Inverse rate: overlap ρ of the two halves of a batch.
    #[arg(long)]
    pub rho: Option<f64>,
    /// Inverse rate: λ* (fixed mode) or its initial value (validated mode).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Inverse rate: how λ* is chosen.
    #[arg(long, value_enum)]
    pub lambda_mode: Option<LambdaMode>,
    /// Inverse rate, grid mode: the training-set size n in s = ln(1/δ)/n (regraft train
    /// fills it in from the data).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Cross-noise: glob of the noise sites (values or nodes).
    #[arg(long)]
    pub noise_layers: Option<String>,
    /// Cross-noise: initial σ of every layer.
    #[arg(long)]
    pub init_sigma: Option<f64>,
    /// Cross-noise: one learned σ per channel of each noise site (default: one per layer).
    #[arg(long)]
    pub sigma_per_channel: bool,
    /// Cross-regularization: noise draws averaged by the validation head.
    #[arg(long)]
    pub k: Option<usize>,
    /// Cross-regularization: a validation step every R training steps.
    #[arg(long)]
    pub every: Option<usize>,
    /// Cross-regularization: learning rate of the regularization parameters.
    #[arg(long)]
    pub val_lr: Option<f32>,
    /// Cross-regularization: optimizer of the regularization parameters (default adam;
    /// sgd is the paper's plain gradient step).
    #[arg(long, value_enum)]
    pub val_optimizer: Option<crate::train::optim::ValOptimizer>,
    /// Cross-regularization: samples per validation step (default: cross-noise
    /// ceil(batch/K), cross-norm the batch size).
    #[arg(long)]
    pub val_batch: Option<usize>,
    /// Cross-norm: glob of the weights to reparametrize.
    #[arg(long)]
    pub norm_layers: Option<String>,
}

impl RecipeFlags {
    /// `base` (or the --recipe file, or the defaults) with the flags applied.
    pub fn resolve(&self, base: Option<Recipe>) -> Result<Recipe> {
        let mut r = match (&self.recipe, base) {
            (Some(p), _) => Recipe::load(p)?,
            (None, Some(b)) => b,
            (None, None) => Recipe::default(),
        };
        if let Some(v) = self.loss {
            r.loss = v;
        }
        if self.logits.is_some() {
            r.logits = self.logits.clone();
        }
        if !self.freeze.is_empty() {
            r.freeze = self.freeze.clone();
        }
        if let Some(v) = self.optimizer {
            if v != r.optimizer.kind && v == OptimizerKind::Adamw && self.weight_decay.is_none() {
                r.optimizer.weight_decay = 0.01;
            }
            r.optimizer.kind = v;
        }
        if let Some(v) = self.lr {
            r.lr = v;
        }
        if let Some(v) = self.momentum {
            r.optimizer.momentum = v;
        }
        if let Some(v) = self.nesterov {
            r.optimizer.nesterov = v;
        }
        if let Some(v) = self.weight_decay {
            r.optimizer.weight_decay = v;
        }
        if self.clip_norm.is_some() {
            r.optimizer.clip_norm = self.clip_norm;
        }
        if self.no_decay_1d {
            r.optimizer.no_decay_1d = true;
        }
        if let Some(s) = &self.schedule {
            r.schedule = match s.as_str() {
                "constant" => Schedule::Constant,
                "cosine" => Schedule::Cosine {
                    warmup_steps: self.warmup_steps,
                },
                "step" => Schedule::Step {
                    step_size: 30,
                    gamma: 0.1,
                },
                other => {
                    return Err(crate::Error::flag(
                        "--schedule",
                        format!("unknown schedule '{other}' (constant, cosine, step)"),
                    ));
                }
            };
        }
        if let Some(v) = self.epochs {
            r.epochs = v;
        }
        if let Some(v) = self.batch_size {
            r.batch_size = v;
        }
        if let Some(v) = self.seed {
            r.seed = v;
        }
        match self.regularizer.as_deref() {
            None => {}
            Some("none") => r.regularizer = Regularizer::None,
            // A recipe's own settings for the same regularizer are kept.
            Some("inverse-rate") if matches!(r.regularizer, Regularizer::InverseRate(_)) => {}
            Some("inverse-rate") => {
                r.regularizer = Regularizer::InverseRate(InverseRate::default())
            }
            // A recipe's own settings for the same regularizer are kept.
            Some("cross-noise") if matches!(r.regularizer, Regularizer::CrossNoise(_)) => {}
            Some("cross-noise") => r.regularizer = Regularizer::CrossNoise(CrossNoise::default()),
            // A recipe's own settings for the same regularizer are kept.
            Some("cross-norm") if matches!(r.regularizer, Regularizer::CrossNorm(_)) => {}
            Some("cross-norm") => r.regularizer = Regularizer::CrossNorm(CrossNorm::default()),
            Some(other) => {
                return Err(crate::Error::flag(
                    "--regularizer",
                    format!(
                        "unknown regularizer '{other}' (none, inverse-rate, cross-noise, cross-norm)"
                    ),
                ));
            }
        }
        let ir_flags = self.rho.is_some()
            || self.lambda.is_some()
            || self.lambda_mode.is_some()
            || self.n_train.is_some();
        match &mut r.regularizer {
            Regularizer::InverseRate(ir) => {
                if let Some(v) = self.rho {
                    ir.rho = v;
                }
                if let Some(v) = self.lambda {
                    ir.lambda = v;
                }
                if let Some(v) = self.lambda_mode {
                    ir.lambda_mode = v;
                }
                if self.n_train.is_some() {
                    ir.n_train = self.n_train;
                }
                if let Some(v) = self.every {
                    ir.every = v;
                }
                if let Some(v) = self.val_lr {
                    ir.val_lr = v;
                }
                if let Some(v) = self.val_optimizer {
                    ir.val_optimizer = v;
                }
                if self.val_batch.is_some() {
                    return Err(crate::Error::flag(
                        "--val-batch",
                        "needs --regularizer cross-noise or cross-norm (the inverse rate's validation step uses the training batch size)",
                    ));
                }
                if (self.every.is_some() || self.val_lr.is_some() || self.val_optimizer.is_some())
                    && ir.lambda_mode != LambdaMode::Validated
                {
                    return Err(crate::Error::flag(
                        "--every/--val-lr/--val-optimizer",
                        "the inverse rate has a validation step only with --lambda-mode validated",
                    ));
                }
            }
            _ if ir_flags => {
                return Err(crate::Error::flag(
                    "--rho/--lambda/--lambda-mode",
                    "need --regularizer inverse-rate",
                ));
            }
            Regularizer::CrossNoise(c) => {
                if self.noise_layers.is_some() {
                    c.layers = self.noise_layers.clone();
                }
                if let Some(v) = self.init_sigma {
                    c.init_sigma = v;
                }
                if self.sigma_per_channel {
                    c.per_channel = true;
                }
                if let Some(v) = self.k {
                    c.k = v;
                }
                if let Some(v) = self.every {
                    c.every = v;
                }
                if let Some(v) = self.val_lr {
                    c.val_lr = v;
                }
                if let Some(v) = self.val_optimizer {
                    c.val_optimizer = v;
                }
                if self.val_batch.is_some() {
                    c.val_batch = self.val_batch;
                }
            }
            Regularizer::CrossNorm(c) => {
                if self.norm_layers.is_some() {
                    c.layers = self.norm_layers.clone();
                }
                if let Some(v) = self.every {
                    c.every = v;
                }
                if let Some(v) = self.val_lr {
                    c.val_lr = v;
                }
                if let Some(v) = self.val_optimizer {
                    c.val_optimizer = v;
                }
                if self.val_batch.is_some() {
                    c.val_batch = self.val_batch;
                }
            }
            Regularizer::None => {}
        }
        let cross_flags = self.noise_layers.is_some()
            || self.init_sigma.is_some()
            || self.sigma_per_channel
            || self.k.is_some();
        if cross_flags && !matches!(r.regularizer, Regularizer::CrossNoise(_)) {
            return Err(crate::Error::flag(
                "--noise-layers/--init-sigma/--sigma-per-channel/--k",
                "need --regularizer cross-noise",
            ));
        }
        let val_flags = self.every.is_some()
            || self.val_lr.is_some()
            || self.val_optimizer.is_some()
            || self.val_batch.is_some();
        if val_flags && matches!(r.regularizer, Regularizer::None) {
            return Err(crate::Error::flag(
                "--every/--val-lr/--val-optimizer/--val-batch",
                "need a regularizer with a validation step (cross-noise, cross-norm, or inverse-rate with --lambda-mode validated)",
            ));
        }
        if self.norm_layers.is_some() && !matches!(r.regularizer, Regularizer::CrossNorm(_)) {
            return Err(crate::Error::flag(
                "--norm-layers",
                "needs --regularizer cross-norm",
            ));
        }
        r.validate()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::RecipeFlags;
    use crate::regularizers::{LambdaMode, Regularizer};

    #[test]
    fn validation_step_flags_reach_the_recipe() {
        let f = RecipeFlags {
            regularizer: Some("cross-noise".into()),
            every: Some(3),
            val_lr: Some(0.2),
            val_batch: Some(5),
            ..Default::default()
        };
        let Regularizer::CrossNoise(c) = f.resolve(None).unwrap().regularizer else {
            panic!("cross-noise expected")
        };
        assert_eq!((c.every, c.val_lr, c.val_batch), (3, 0.2, Some(5)));

        let f = RecipeFlags {
            regularizer: Some("cross-norm".into()),
            val_batch: Some(7),
            ..Default::default()
        };
        let Regularizer::CrossNorm(c) = f.resolve(None).unwrap().regularizer else {
            panic!("cross-norm expected")
        };
        assert_eq!(c.val_batch, Some(7));

        let f = RecipeFlags {
            regularizer: Some("inverse-rate".into()),
            lambda_mode: Some(LambdaMode::Validated),
            every: Some(4),
            val_lr: Some(0.3),
            ..Default::default()
        };
        let Regularizer::InverseRate(ir) = f.resolve(None).unwrap().regularizer else {
            panic!("inverse-rate expected")
        };
        assert_eq!((ir.every, ir.val_lr), (4, 0.3));
    }
}
