//! Cross-regularization, norm variant (seed 001; METHODS.md §2): each selected weight is
//! reparametrized as w = ρ_l·v/‖v‖₂. The direction v (the original initializer, same
//! name) is learned on the training split, the scalar ρ_l on the validation split. ρ_l
//! starts at ‖v‖, so the model computes the same function before training. For least
//! squares this converges to the ridge solution at the validation-optimal penalty.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{Builder, Graph};
use crate::proto::{attr_int, tensor, tensor_values};
use crate::train::grad::glob_match;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrossNorm {
    /// Glob over weight names (default: the weights of every Gemm, MatMul and Conv).
    pub layers: Option<String>,
    /// A validation step every `every` training steps.
    pub every: usize,
    /// Learning rate of the ρ parameters.
    pub val_lr: f32,
    /// Their optimizer.
    pub val_optimizer: crate::train::optim::ValOptimizer,
    /// Samples per validation step (default: the training batch size).
    pub val_batch: Option<usize>,
}

impl Default for CrossNorm {
    fn default() -> Self {
        CrossNorm {
            layers: None,
            every: 10,
            val_lr: 0.01,
            val_optimizer: Default::default(),
            val_batch: None,
        }
    }
}

/// Name of the scale parameter of a weight.
pub fn param_name(w: &str) -> String {
    format!("norm.{w}.rho")
}

/// The weights to reparametrize.
pub fn select(g: &Graph, pattern: Option<&str>) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for n in &g.nodes {
        if !matches!(n.op_type(), "Gemm" | "MatMul" | "Conv") {
            continue;
        }
        if let Some(w) = n.input.get(1)
            && let Some(t) = g.initializer(w)
            && t.dims.len() >= 2
            && pattern.is_none_or(|p| glob_match(p, w))
            && !out.contains(w)
        {
            out.push(w.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::flag(
            "--norm-layers",
            "no Gemm/MatMul/Conv weight initializer matches",
        ));
    }
    Ok(out)
}

/// Replace each weight's uses by ρ·v/‖v‖; `rho` gives ρ per weight (None: ‖v‖).
pub fn reparametrize(
    g: &mut Graph,
    weights: &[String],
    rho: &dyn Fn(&str) -> Option<f32>,
) -> Result<Vec<String>> {
    let mut b = Builder::new(g, "cross-norm");
    let mut names = vec![];
    for w in weights {
        let t = g
            .initializer(w)
            .ok_or_else(|| Error::msg(format!("'{w}' is not an initializer")))?;
        let v = tensor_values::<f32>(t)?;
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() as f32;
        let p = param_name(w);
        b.prefix = format!("norm/{w}/");
        b.patch
            .initializers
            .push(tensor::<f32>(&p, &[], &[rho(w).unwrap_or(norm)]));
        let sq = b.op("Mul", &[w, w]);
        let s = b.op_a("ReduceSum", &[&sq], vec![attr_int("keepdims", 0)]);
        let n = b.op("Sqrt", &[&s]);
        let scale = b.op("Div", &[&p, &n]);
        let wn = b.op("Mul", &[w, &scale]);
        b.patch.replace.push((w.clone(), wn));
        names.push(p);
    }
    g.apply(b.finish())?;
    Ok(names)
}

/// ρ·v/‖v‖ computed on the host (for export).
pub fn fold(v: &[f32], rho: f32) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    v.iter()
        .map(|x| (*x as f64 * rho as f64 / norm) as f32)
        .collect()
}
