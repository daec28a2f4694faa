//! Optimizers as update subgraphs. Each parameter `p` with gradient `g` gets new nodes
//! computing `p_new` and its state's new values; the state tensors are graph inputs and
//! their updated values graph outputs, so the whole step runs inside ONNX Runtime.
//!
//! - SGD (PyTorch semantics): g ← g + wd·p (or decoupled: p ← p·(1 − lr·wd));
//!   buf ← μ·buf + g; d = g + μ·buf (Nesterov) or buf; p ← p − lr·d.
//! - AdamW: m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p·(1 − lr·wd) −
//!   lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε), with the bias corrections folded into the
//!   scalars lr_t = lr·√(1−β₂ᵗ)/(1−β₁ᵗ) and ε_t = ε·√(1−β₂ᵗ) (13 passes per parameter).
//! - Optional global gradient-norm clipping: every g is scaled by
//!   min(1, max_norm / (‖g‖₂ + 1e-6)) before the update.
//! - The learning rate and the 1-based step t are scalar inputs, so schedules live on
//!   the host; the scalars derived from them are computed once for all parameters.

use serde::{Deserialize, Serialize};

use crate::ir::Builder;
use crate::proto::attr_int;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

/// The optimizer of a validation step's regularization parameters (σ, ρ, λ): Adam
/// (AdamW without weight decay, PyTorch's defaults β = (0.9, 0.999), ε = 1e-8), or plain
/// gradient descent ρ ← ρ − η·∇ρ, the update of the cross-regularization paper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ValOptimizer {
    #[default]
    Adam,
    Sgd,
}

impl ValOptimizer {
    /// The update's settings.
    pub fn config(self) -> OptimizerConfig {
        OptimizerConfig {
            kind: match self {
                ValOptimizer::Adam => OptimizerKind::Adamw,
                ValOptimizer::Sgd => OptimizerKind::Sgd,
            },
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            ..Default::default()
        }
    }
}

/// Optimizer settings (a `[optimizer]` table in a recipe).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// SGD only: decoupled weight decay (p ← p·(1 − lr·wd)) instead of PyTorch's
    /// coupled L2 term. AdamW is always decoupled.
    pub decoupled: bool,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clipping threshold.
    pub clip_norm: Option<f32>,
    /// Per-group setting: no weight decay on biases and normalization parameters
    /// (every parameter of rank ≤ 1).
    pub no_decay_1d: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            decoupled: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: None,
            no_decay_1d: false,
        }
    }
}

/// A state tensor of the optimizer: its name and the parameter it belongs to.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    pub name: String,
    pub param: String,
}

impl OptimizerConfig {
    /// Names of the optimizer state slots of a parameter.
    pub fn slots(&self, param: &str) -> Vec<String> {
        match self.kind {
            OptimizerKind::Sgd if self.momentum != 0.0 => vec![format!("{param}.momentum")],
            OptimizerKind::Sgd => vec![],
            OptimizerKind::Adamw => vec![format!("{param}.exp_avg"), format!("{param}.exp_avg_sq")],
        }
    }

    /// Global-norm clipping: returns the scaled gradients (or the inputs unchanged).
    pub fn clip(&self, b: &mut Builder, grads: &[String]) -> Vec<String> {
        let Some(max) = self.clip_norm else {
            return grads.to_vec();
        };
        let sq: Vec<String> = grads
            .iter()
            .map(|g| {
                let s = b.op("Mul", &[g, g]);
                b.op_a("ReduceSum", &[&s], vec![attr_int("keepdims", 0)])
            })
            .collect();
        let refs: Vec<&str> = sq.iter().map(String::as_str).collect();
        let total = if refs.len() == 1 {
            sq[0].clone()
        } else {
            b.op("Sum", &refs)
        };
        let norm = b.op("Sqrt", &[&total]);
        let tiny = b.scalar_of(1, 1e-6);
        let den = b.op("Add", &[&norm, &tiny]);
        let m = b.scalar_of(1, max as f64);
        let ratio = b.op("Div", &[&m, &den]);
        let one = b.scalar_of(1, 1.0);
        let scale = b.op("Min", &[&ratio, &one]);
        grads.iter().map(|g| b.op("Mul", &[g, &scale])).collect()
    }

    /// Update nodes for one parameter. `slots` are the state input names (as from
    /// [`slots`](Self::slots)); outputs are written to `p_out` and `slot_outs`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        b: &mut Builder,
        p: &str,
        g: &str,
        rank: usize,
        lr: &str,
        step: &str,
        slots: &[String],
        p_out: &str,
        slot_outs: &[String],
    ) {
        let wd = if self.no_decay_1d && rank <= 1 {
            0.0
        } else {
            self.weight_decay
        };
        let one = b.scalar_of(1, 1.0);
        match self.kind {
            OptimizerKind::Sgd => {
                let mut g = g.to_string();
                let mut p_cur = p.to_string();
                if wd != 0.0 {
                    let w = b.scalar_of(1, wd as f64);
                    if self.decoupled {
                        let lw = b.op_shared("Mul", &[lr, &w]);
                        let f = b.op_shared("Sub", &[&one, &lw]);
                        p_cur = b.op("Mul", &[p, &f]);
                    } else {
                        let t = b.op("Mul", &[p, &w]);
                        g = b.op("Add", &[&g, &t]);
                    }
                }
                let d = if self.momentum != 0.0 {
                    let mu = b.scalar_of(1, self.momentum as f64);
                    let mb = b.op("Mul", &[&slots[0], &mu]);
                    b.node_to("Add", &[&mb, &g], &[&slot_outs[0]], vec![]);
                    if self.nesterov {
                        let t = b.op("Mul", &[&slot_outs[0], &mu]);
                        b.op("Add", &[&g, &t])
                    } else {
                        slot_outs[0].clone()
                    }
                } else {
                    g
                };
                let step = b.op("Mul", &[&d, lr]);
                b.node_to("Sub", &[&p_cur, &step], &[p_out], vec![]);
            }
            OptimizerKind::Adamw => {
                let (b1, b2) = (
                    b.scalar_of(1, self.beta1 as f64),
                    b.scalar_of(1, self.beta2 as f64),
                );
                let (c1, c2) = (
                    b.scalar_of(1, 1.0 - self.beta1 as f64),
                    b.scalar_of(1, 1.0 - self.beta2 as f64),
                );
                let m1 = b.op("Mul", &[&slots[0], &b1]);
                let m2 = b.op("Mul", &[g, &c1]);
                b.node_to("Add", &[&m1, &m2], &[&slot_outs[0]], vec![]);
                let gg = b.op("Mul", &[g, g]);
                let v1 = b.op("Mul", &[&slots[1], &b2]);
                let v2 = b.op("Mul", &[&gg, &c2]);
                b.node_to("Add", &[&v1, &v2], &[&slot_outs[1]], vec![]);
                // Bias corrections from the step t, folded into two scalars:
                // lr·m̂/(√v̂ + ε) = lr_t·m/(√v + ε_t), lr_t = lr·√bc₂/bc₁, ε_t = ε·√bc₂.
                let p1 = b.op_shared("Pow", &[&b1, step]);
                let bc1 = b.op_shared("Sub", &[&one, &p1]);
                let p2 = b.op_shared("Pow", &[&b2, step]);
                let bc2 = b.op_shared("Sub", &[&one, &p2]);
                let sb2 = b.op_shared("Sqrt", &[&bc2]);
                let r = b.op_shared("Div", &[&sb2, &bc1]);
                let lr_t = b.op_shared("Mul", &[lr, &r]);
                let e = b.scalar_of(1, self.eps as f64);
                let eps_t = b.op_shared("Mul", &[&e, &sb2]);
                let sv = b.op("Sqrt", &[&slot_outs[1]]);
                let den = b.op("Add", &[&sv, &eps_t]);
                let upd = b.op("Div", &[&slot_outs[0], &den]);
                let lu = b.op("Mul", &[&upd, &lr_t]);
                let p_dec = if wd != 0.0 {
                    let w = b.scalar_of(1, wd as f64);
                    let lw = b.op_shared("Mul", &[lr, &w]);
                    let f = b.op_shared("Sub", &[&one, &lw]);
                    b.op("Mul", &[p, &f])
                } else {
                    p.to_string()
                };
                b.node_to("Sub", &[&p_dec, &lu], &[p_out], vec![]);
            }
        }
    }
}

/// Learning-rate schedules, evaluated on the host each step.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    #[default]
    Constant,
    /// Multiply by `gamma` every `step_size` epochs.
    Step { step_size: usize, gamma: f32 },
    /// Linear warmup over `warmup_steps`, then cosine decay to 0 at the last step.
    Cosine { warmup_steps: usize },
}

impl Schedule {
    /// Learning rate at 0-based `step` of `total` steps (`steps_per_epoch` per epoch).
    pub fn lr(&self, base: f32, step: usize, total: usize, steps_per_epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                let epoch = step / steps_per_epoch.max(1);
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine { warmup_steps } => {
                if step < warmup_steps {
                    base * (step + 1) as f32 / warmup_steps as f32
                } else {
                    let span = total.saturating_sub(warmup_steps).max(1) as f32;
                    let t = (step - warmup_steps) as f32 / span;
                    base * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(0.1, 50, 100, 10), 0.1);
        let s = Schedule::Step {
            step_size: 2,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 19, 100, 10), 1.0);
        assert_eq!(s.lr(1.0, 20, 100, 10), 0.5);
        let c = Schedule::Cosine { warmup_steps: 10 };
        assert!((c.lr(1.0, 0, 110, 10) - 0.1).abs() < 1e-6);
        assert!((c.lr(1.0, 10, 110, 10) - 1.0).abs() < 1e-6);
        assert!((c.lr(1.0, 60, 110, 10) - 0.5).abs() < 1e-6);
        assert!(c.lr(1.0, 109, 110, 10) < 0.01);
    }
}
