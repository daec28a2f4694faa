//! The papers' methods as graph rewrites, one file per method.

pub mod inverse_rate;
pub mod noise;
pub mod norm;

use serde::{Deserialize, Serialize};

pub use inverse_rate::{InverseRate, LambdaMode};
pub use noise::CrossNoise;
pub use norm::CrossNorm;

/// The regularizer of a recipe (`[regularizer]` table, `kind = ...`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Regularizer {
    #[default]
    None,
    InverseRate(InverseRate),
    CrossNoise(CrossNoise),
    CrossNorm(CrossNorm),
}
