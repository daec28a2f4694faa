//! Cross-regularization, noise variant (seed 001; METHODS.md §2): h = u + σ_l·ε at the
//! pre-activations u of hidden layers, σ_l = exp(s_l) a learnable scalar per layer,
//! ε ~ N(0, I) drawn afresh in every run (`RandomNormalLike`, seeded from the recipe's
//! seed so a run is reproducible; a resumed run continues with fresh draws, so runs with
//! noise resume statistically, not bit-exactly). s_l is learned on the validation split,
//! never by the training step.
//!
//! Default sites: outputs of Conv, Gemm, MatMul (+ a bias Add) and BatchNormalization
//! that feed an activation; never the logits. `--noise-layers` selects by glob on the
//! value or node name instead.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{Builder, Graph};
use crate::proto::{attr_float, tensor};
use crate::train::grad::glob_match;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrossNoise {
    /// Glob over value or node names of the sites (default: every hidden pre-activation).
    pub layers: Option<String>,
    /// Initial σ of every layer.
    pub init_sigma: f64,
    /// Noise draws averaged by the validation head.
    pub k: usize,
    /// A validation step every `every` training steps.
    pub every: usize,
    /// Learning rate of the regularization parameters (Adam).
    pub val_lr: f32,
}

impl Default for CrossNoise {
    fn default() -> Self {
        CrossNoise { layers: None, init_sigma: 0.1, k: 8, every: 10, val_lr: 0.01 }
    }
}

const ACTIVATIONS: &[&str] = &["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Softplus", "HardSwish", "Mish", "PRelu"];
const PRODUCERS: &[&str] = &["Conv", "Gemm", "MatMul", "BatchNormalization", "Add"];

/// Name of the log σ parameter of a site.
pub fn param_name(site: &str) -> String {
    let clean: String = site.trim_start_matches('/').chars().map(|c| if c.is_alphanumeric() || c == '.' || c == '_' { c } else { '_' }).collect();
    format!("noise.{clean}.log_sigma")
}

/// The values that get noise.
pub fn select_sites(g: &Graph, pattern: Option<&str>, logits: &str) -> Result<Vec<String>> {
    let consumers = g.consumers();
    let producers = g.producers();
    let mut sites = vec![];
    for n in &g.nodes {
        let Some(out) = n.output.first() else { continue };
        if out == logits || out.is_empty() {
            continue;
        }
        let chosen = match pattern {
            Some(p) => glob_match(p, out) || glob_match(p, n.name()),
            None => {
                let feeds_act = consumers.get(out.as_str()).is_some_and(|cs| cs.iter().any(|&(i, _)| ACTIVATIONS.contains(&g.nodes[i].op_type())));
                let is_pre = match n.op_type() {
                    "Add" => n.input.iter().any(|i| producers.get(i.as_str()).is_some_and(|&p| matches!(g.nodes[p].op_type(), "MatMul" | "Conv" | "Gemm"))),
                    op => PRODUCERS.contains(&op),
                };
                feeds_act && is_pre
            }
        };
        if chosen {
            sites.push(out.clone());
        }
    }
    if sites.is_empty() {
        return Err(Error::flag("--noise-layers", match pattern {
            Some(p) => format!("the pattern '{p}' matches no value or node"),
            None => "the model has no hidden pre-activation feeding an activation".into(),
        }));
    }
    Ok(sites)
}

/// How the noise is drawn.
#[derive(Clone, Copy, Debug)]
pub enum Draw {
    /// `RandomNormalLike` with this seed (a different one per site).
    Random(u64),
    /// K fixed draws baked into the graph for an input replicated K times along the batch
    /// (the MC predictive of an exported model): deterministic on every runtime.
    Fixed { k: usize, seed: u64 },
}

/// Insert h = u + exp(s)·ε at each site; `log_sigma` gives the value of s per site
/// (the new scalar initializers are named by [`param_name`]). Returns the parameter names.
pub fn insert(g: &mut Graph, sites: &[String], log_sigma: &dyn Fn(&str) -> f32, draw: Draw) -> Result<Vec<String>> {
    let types = crate::ir::infer::infer(g);
    let mut names = vec![];
    let mut b = Builder::new(g, "cross-noise");
    for (i, u) in sites.iter().enumerate() {
        let p = param_name(u);
        b.prefix = format!("noise/{}/", p.trim_start_matches("noise.").trim_end_matches(".log_sigma"));
        let mut t = tensor::<f32>(&p, &[], &[log_sigma(u)]);
        t.name = Some(p.clone());
        b.patch.initializers.push(t);
        let sigma = b.op("Exp", &[&p]);
        let eps = match draw {
            Draw::Random(seed) => {
                // tract picks RandomNormalLike over RandomNormal by the node name's "Like" suffix.
                let name = b.fresh("RandomNormalLike");
                let out = b.fresh("eps");
                let mut n = crate::proto::make_node("RandomNormalLike", &name, &[u], &[&out], vec![attr_float("seed", (seed.wrapping_add(i as u64 * 7919) % 1_000_000) as f32)]);
                n.doc_string = Some("regraft:cross-noise".into());
                b.patch.nodes.push(n);
                out
            }
            Draw::Fixed { k, seed } => {
                let shape = types
                    .shape(u)
                    .and_then(|s| s[1..].iter().copied().collect::<Option<Vec<i64>>>())
                    .ok_or_else(|| Error::msg(format!("the MC predictive needs the per-sample shape of '{u}' statically")))?;
                let per: usize = shape.iter().product::<i64>() as usize;
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed.wrapping_add(i as u64));
                let data: Vec<f32> = (0..k * per).map(|_| gaussian(&mut rng)).collect();
                let mut dims = vec![k as i64, 1];
                dims.extend(&shape);
                let eps = b.initializer("eps", tensor::<f32>("", &dims, &data));
                // u [K·N, rest] → [K, N, rest] + σ·ε[K, 1, rest] → [K·N, rest]
                let mut tshape = vec![k as i64, -1];
                tshape.extend(&shape);
                let ts = b.ints(&tshape);
                let u3 = b.op("Reshape", &[u, &ts]);
                let se = b.op("Mul", &[&eps, &sigma]);
                let h3 = b.op("Add", &[&u3, &se]);
                let su = b.op("Shape", &[u]);
                let h = b.op("Reshape", &[&h3, &su]);
                b.patch.replace.push((u.clone(), h));
                names.push(p);
                continue;
            }
        };
        let se = b.op("Mul", &[&eps, &sigma]);
        let h = b.op("Add", &[u, &se]);
        b.patch.replace.push((u.clone(), h));
        names.push(p);
    }
    g.apply(b.finish())?;
    Ok(names)
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl rand::RngExt) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0f64 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Replicate the data input K times along the batch axis (for the K-draw heads).
pub fn replicate_input(g: &mut Graph, input: &str, k: usize, rank: usize) -> Result<String> {
    let mut b = Builder::new(g, "cross-noise");
    b.prefix = "noise/replicate/".into();
    let mut reps = vec![1i64; rank];
    reps[0] = k as i64;
    let r = b.ints(&reps);
    let t = b.op("Tile", &[input, &r]);
    b.patch.replace.push((input.to_string(), t.clone()));
    g.apply(b.finish())?;
    Ok(t)
}
