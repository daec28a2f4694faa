//! A training recipe: everything `regraft rewrite` and `regraft train` need to know,
//! read from TOML and overridden by command-line flags (flags win).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::loss::LossKind;
use super::optim::{OptimizerConfig, Schedule};
use crate::error::{Context, Error, Result};
use crate::regularizers::Regularizer;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    pub loss: LossKind,
    /// The logits value (default: the model's only floating-point output).
    pub logits: Option<String>,
    /// Glob patterns of parameters kept fixed.
    pub freeze: Vec<String>,
    pub lr: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub regularizer: Regularizer,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            loss: LossKind::CrossEntropy,
            logits: None,
            freeze: vec![],
            lr: 0.05,
            epochs: 10,
            batch_size: 64,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::Constant,
            regularizer: Regularizer::None,
        }
    }
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe> {
        let s = std::fs::read_to_string(path).file_ctx(path)?;
        toml::from_str(&s).map_err(|e| Error::file(path, format!("not a valid recipe: {e}")))
    }
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serializes")
    }
    /// Reject settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::flag(
                "--lr",
                format!("must be a positive number, not {}", self.lr),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::flag("--batch-size", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.optimizer.momentum) {
            return Err(Error::flag("optimizer.momentum", "must be in [0, 1)"));
        }
        match &self.regularizer {
            Regularizer::InverseRate(ir) => ir.validate()?,
            Regularizer::CrossNoise(c) => {
                if c.k == 0 || c.every == 0 {
                    return Err(Error::flag("--k/--every", "must be at least 1"));
                }
                if !(c.init_sigma > 0.0 && c.init_sigma.is_finite()) {
                    return Err(Error::flag("--init-sigma", "must be positive"));
                }
            }
            Regularizer::CrossNorm(c) => {
                if c.every == 0 {
                    return Err(Error::flag("--every", "must be at least 1"));
                }
            }
            Regularizer::None => {}
        }
        Ok(())
    }
}
