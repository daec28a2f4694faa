//! The inverse-rate objective of PAC-Chernoff (seed 000; METHODS.md §1) as a loss subgraph.
//!
//! From the per-sample losses ℓ of a batch of m samples and the overlap ρ:
//! k = ⌊m·(1+ρ)/2⌋ (computed at run time, so a short last batch works), S1 = the first k
//! samples, S2 = the last k. The CGF estimate is
//!   Ĵ(λ) = ln((1/k)·Σ_{S1} e^{−λℓ}) + λ·mean_{S2}(ℓ) = LSE(−λ·ℓ[S1]) − ln k + λ·mean_{S2}(ℓ),
//! and the training objective is mean_{S2}(ℓ) + Ĵ(λ*)/λ*. Gradients flow through both
//! terms; λ* is a constant.
//!
//! λ* modes:
//! - `fixed`: the given λ (default 1).
//! - `grid`: λ* = argmin over the grid of (s + Ĵ(λ))/λ with s = ln(1/δ)/n, n the
//!   training-set size; the objective is the grid entry at the argmin (no gradient flows
//!   through the choice).
//! - `validated`: λ* = exp(log λ) with log λ learned on the validation split (see
//!   `regularizers::validation`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::infer::infer;
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, attr_int, attr_ints};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LambdaMode {
    Fixed,
    Grid,
    Validated,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InverseRate {
    /// Overlap ρ ∈ [0, 1] of the two halves.
    pub rho: f64,
    /// λ* for `fixed`, the initial λ for `validated`.
    pub lambda: f64,
    pub lambda_mode: LambdaMode,
    /// The grid for `grid` mode (the authors' grid by default).
    pub grid: Vec<f64>,
    /// Confidence δ of the bound, for s = ln(1/δ)/n in `grid` mode.
    pub delta: f64,
    /// Training-set size n; filled in by `regraft train` from the data.
    pub n_train: Option<usize>,
    /// `validated` mode: a validation step every `every` training steps ...
    pub every: usize,
    /// ... with this learning rate for log λ ...
    pub val_lr: f32,
    /// ... and this optimizer.
    pub val_optimizer: crate::train::optim::ValOptimizer,
}

impl Default for InverseRate {
    fn default() -> Self {
        InverseRate {
            rho: 0.5,
            lambda: 1.0,
            lambda_mode: LambdaMode::Fixed,
            grid: vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.0],
            delta: 0.05,
            n_train: None,
            every: 10,
            val_lr: 0.01,
            val_optimizer: Default::default(),
        }
    }
}

/// Names of the values the subgraph adds.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// The objective (scalar).
    pub objective: String,
    /// Ĵ(λ*) and λ* (scalars), for logging.
    pub j: String,
    pub lambda: String,
    /// The regularizer's value: objective − mean(ℓ).
    pub reg: String,
}

/// Name of the `validated` mode's learned parameter (an input of the training step).
pub const LOG_LAMBDA: &str = "inverse_rate.log_lambda";

impl InverseRate {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::flag(
                "--rho",
                format!("must be in [0, 1], not {}", self.rho),
            ));
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(Error::flag(
                "--lambda",
                format!("must be positive, not {}", self.lambda),
            ));
        }
        if self.lambda_mode == LambdaMode::Grid
            && (self.grid.is_empty() || self.grid.iter().any(|&l| l <= 0.0))
        {
            return Err(Error::flag(
                "regularizer.grid",
                "must be a non-empty list of positive λ",
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::flag("regularizer.delta", "must be in (0, 1)"));
        }
        Ok(())
    }

    /// Build the objective on the per-sample losses `per` ([N]) inside `b`. `lambda_in`
    /// names a scalar input holding log λ (validated mode) instead of a constant.
    pub fn build(
        &self,
        b: &mut Builder,
        opset: i64,
        dt: i32,
        per: &str,
        lambda_in: Option<&str>,
    ) -> Result<Outputs> {
        self.validate()?;
        let f = |b: &mut Builder, v: f64| b.scalar_of(dt, v);
        // m, k = ⌊m(1+ρ)/2⌋ ≥ 1, as float and int64 [1].
        let shape = b.op("Shape", &[per]);
        let mf = b.op_a("Cast", &[&shape], vec![attr_int("to", dt as i64)]);
        let c = f(b, (1.0 + self.rho) / 2.0);
        let kf = b.op("Mul", &[&mf, &c]);
        let kf = b.op("Floor", &[&kf]);
        let one = f(b, 1.0);
        let kf = b.op("Max", &[&kf, &one]);
        let ki = b.op_a("Cast", &[&kf], vec![attr_int("to", DataType::Int64 as i64)]);
        let axis0 = b.ints(&[0]);
        // S1 and S2 as masks over the positions 0..m rather than slices: the backward pass
        // of a mask is one Mul, that of a Slice with run-time bounds about twenty ops.
        // S1 = positions < k, S2 = positions ≥ m − k.
        let zero_s = b.constant::<i64>(&[], &[0]);
        let one_s = b.constant::<i64>(&[], &[1]);
        let m_s = b.op_a("Gather", &[&shape, &zero_s], vec![attr_int("axis", 0)]);
        let pos = b.op("Range", &[&zero_s, &m_s, &one_s]);
        let in1 = b.op("Less", &[&pos, &ki]);
        let start2 = b.op("Sub", &[&shape, &ki]);
        let in2 = b.op("GreaterOrEqual", &[&pos, &start2]);
        let mask2 = b.op_a("Cast", &[&in2], vec![attr_int("to", dt as i64)]);
        // log of the S1 mask: 0 inside S1, −∞ outside, added to the log-sum-exp's argument.
        let mask1 = b.op_a("Cast", &[&in1], vec![attr_int("to", dt as i64)]);
        let logmask1 = b.op("Log", &[&mask1]);
        let kfs = b.op_a("ReduceSum", &[&kf, &axis0], vec![attr_int("keepdims", 0)]); // [1] → scalar
        // mean_{S2}(ℓ) = Σ ℓ·(mask2/k): the weights carry no gradient, so the backward pass
        // of the mean is the ReduceSum's broadcast and one Mul.
        let w2 = b.op("Div", &[&mask2, &kfs]);
        let l2 = b.op("Mul", &[per, &w2]);
        let mean2 = b.op_a("ReduceSum", &[&l2, &axis0], vec![attr_int("keepdims", 0)]);
        let two = f(b, 2.0);
        let mean2x2 = b.op("Mul", &[&mean2, &two]);
        let lnk = b.op("Log", &[&kfs]);
        // For λ (a scalar, or a grid Λ [G]): a = ln((1/k)·Σ_{S1} e^{−λℓ}) = LSE − ln k,
        // Ĵ = a + λ·mean2 (forward only, for logging and the grid's rate) and the objective
        // mean2 + Ĵ/λ written as 2·mean2 + a/λ (the authors' form), whose backward pass has
        // no fan-in to sum.
        let terms = |b: &mut Builder, lam: &str, vector: bool| -> (String, String) {
            let neg = b.op("Neg", &[lam]);
            let lse = if vector {
                let col = b.ints(&[1]);
                let lam_col = b.op("Unsqueeze", &[&neg, &col]); // [G,1]
                let z = b.op("Mul", &[&lam_col, per]); // [G,m]
                let z = b.op("Add", &[&z, &logmask1]);
                reduce_lse(b, opset, &z, 1)
            } else {
                let z = b.op("Mul", &[per, &neg]);
                let z = b.op("Add", &[&z, &logmask1]);
                reduce_lse(b, opset, &z, 0)
            };
            let a = b.op("Sub", &[&lse, &lnk]);
            let al = b.op("Div", &[&a, lam]);
            let objective = b.op("Add", &[&al, &mean2x2]);
            let lm = b.op("Mul", &[lam, &mean2]);
            let jv = b.op("Add", &[&a, &lm]);
            (objective, jv)
        };
        let (objective, j, lambda) = match (self.lambda_mode, lambda_in) {
            (LambdaMode::Grid, _) => {
                let n = self.n_train.ok_or_else(|| {
                    Error::flag("--lambda-mode grid", "needs the training-set size n (regraft train sets it; for regraft grad pass --n-train)")
                })?;
                let s = (1.0 / self.delta).ln() / n as f64;
                let lam = if dt == DataType::Double as i32 {
                    b.constant::<f64>(&[self.grid.len() as i64], &self.grid)
                } else {
                    let g: Vec<f32> = self.grid.iter().map(|&v| v as f32).collect();
                    b.constant::<f32>(&[g.len() as i64], &g)
                };
                let (objs, jv) = terms(b, &lam, true); // [G]
                let sc = f(b, s);
                let sj = b.op("Add", &[&jv, &sc]);
                let rate = b.op("Div", &[&sj, &lam]);
                let idx = b.op_a(
                    "ArgMin",
                    &[&rate],
                    vec![attr_int("axis", 0), attr_int("keepdims", 1)],
                );
                let pick = |b: &mut Builder, v: &str| {
                    let g = b.op_a("Gather", &[v, &idx], vec![attr_int("axis", 0)]);
                    b.op_a("ReduceSum", &[&g, &axis0], vec![attr_int("keepdims", 0)])
                };
                (pick(b, &objs), pick(b, &jv), pick(b, &lam))
            }
            (LambdaMode::Validated, Some(log_l)) | (LambdaMode::Fixed, Some(log_l)) => {
                let lam = b.op("Exp", &[log_l]);
                let (objective, jv) = terms(b, &lam, false);
                (objective, jv, lam)
            }
            (LambdaMode::Fixed, None) => {
                let lam = f(b, self.lambda);
                let (objective, jv) = terms(b, &lam, false);
                (objective, jv, lam)
            }
            (LambdaMode::Validated, None) => {
                return Err(Error::msg("validated λ needs its log λ input"));
            }
        };
        let mean_all = crate::train::loss::reduce_mean(b, opset, per, &[0]);
        let reg = b.op("Sub", &[&objective, &mean_all]);
        Ok(Outputs {
            objective,
            j,
            lambda,
            reg,
        })
    }
}

/// ReduceLogSumExp over one axis, keepdims=0, in the opset's form.
fn reduce_lse(b: &mut Builder, opset: i64, x: &str, axis: i64) -> String {
    if opset >= 18 {
        let a = b.ints(&[axis]);
        b.op_a("ReduceLogSumExp", &[x, &a], vec![attr_int("keepdims", 0)])
    } else {
        b.op_a(
            "ReduceLogSumExp",
            &[x],
            vec![attr_ints("axes", &[axis]), attr_int("keepdims", 0)],
        )
    }
}

/// Replace the graph's mean loss `loss` by the inverse-rate objective on `per_sample`.
/// The objective takes the name `loss`; returns the diagnostic value names.
pub fn rewrite(
    g: &mut Graph,
    cfg: &InverseRate,
    loss: &str,
    per_sample: &str,
    lambda_in: Option<&str>,
) -> Result<Outputs> {
    let dt = infer(g).dtype(per_sample).unwrap_or(DataType::Float as i32);
    let opset = g.opset();
    let mut b = Builder::new(g, "inverse-rate");
    b.prefix = "inverse_rate/".into();
    let o = cfg.build(&mut b, opset, dt, per_sample, lambda_in)?;
    b.patch
        .replace
        .push((loss.to_string(), o.objective.clone()));
    g.apply(b.finish())?;
    Ok(Outputs {
        objective: loss.to_string(),
        ..o
    })
}
