//! Cross-regularization, noise variant (seed 001; METHODS.md §2): h = u + σ_l·ε at the
//! pre-activations u of hidden layers, σ_l = exp(s_l) a learnable scalar per layer (or,
//! with `per_channel`, a vector over the layer's channels), ε ~ N(0, I) drawn afresh in
//! every run. s_l is learned on the validation split, never by the training step.
//!
//! Where ε comes from. In `train_step.onnx` and `val_step.onnx` ε is a graph input per
//! site ([`eps_name`]), filled by the trainer before every run with [`fill_normal`]: a
//! ziggurat sampler on xoshiro256++, keyed by (recipe seed, training or validation step,
//! site), about 2.5 ns per draw where ONNX Runtime's `RandomNormalLike` takes about 13 ns
//! (its draws alone cost 30 % of an MLP training step). Keyed draws also make a resumed
//! run bit-identical to an uninterrupted one, and the training draws cannot depend on the
//! validation step. A site whose per-sample shape is not static falls back to
//! `RandomNormalLike` (seeded from the recipe). The exported MC predictive bakes K fixed
//! draws into the graph instead ([`Draw::Fixed`]).
//!
//! Default sites: outputs of Conv, Gemm, MatMul (+ a bias Add) and BatchNormalization
//! that feed an activation; never the logits. `--noise-layers` selects by glob on the
//! value or node name instead.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, Dim, attr_float, tensor, value_info};
use crate::train::grad::glob_match;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrossNoise {
    /// Glob over value or node names of the sites (default: every hidden pre-activation).
    pub layers: Option<String>,
    /// Initial σ of every layer.
    pub init_sigma: f64,
    /// One σ per channel of each site instead of one per layer: the feature axis of
    /// Gemm/MatMul outputs (the last), axis 1 of Conv and BatchNormalization outputs.
    pub per_channel: bool,
    /// Noise draws averaged by the validation head.
    pub k: usize,
    /// A validation step every `every` training steps.
    pub every: usize,
    /// Learning rate of the regularization parameters.
    pub val_lr: f32,
    /// Their optimizer.
    pub val_optimizer: crate::train::optim::ValOptimizer,
    /// Samples per validation step (each evaluated under K draws). Default (**choice**):
    /// ceil(batch / K), so a validation step processes as many rows as a training step and
    /// costs about one forward and backward pass, amortized over `every` steps.
    pub val_batch: Option<usize>,
}

impl Default for CrossNoise {
    fn default() -> Self {
        CrossNoise {
            layers: None,
            init_sigma: 0.1,
            per_channel: false,
            k: 8,
            every: 10,
            val_lr: 0.01,
            val_optimizer: Default::default(),
            val_batch: None,
        }
    }
}

const ACTIVATIONS: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Elu",
    "Selu",
    "Softplus",
    "HardSwish",
    "Mish",
    "PRelu",
];
const PRODUCERS: &[&str] = &["Conv", "Gemm", "MatMul", "BatchNormalization", "Add"];

/// Name of the log σ parameter of a site.
pub fn param_name(site: &str) -> String {
    let clean: String = site
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("noise.{clean}.log_sigma")
}

/// Name of the ε input of a site whose log σ parameter is `param` (see [`Draw::Input`]).
pub fn eps_name(param: &str) -> String {
    format!("{}.eps", param.trim_end_matches(".log_sigma"))
}

/// Whether a graph input is an ε input made by [`Draw::Input`].
pub fn is_eps_input(name: &str) -> bool {
    name.starts_with("noise.") && name.ends_with(".eps")
}

/// The values that get noise.
pub fn select_sites(g: &Graph, pattern: Option<&str>, logits: &str) -> Result<Vec<String>> {
    let consumers = g.consumers();
    let producers = g.producers();
    let mut sites = vec![];
    for n in &g.nodes {
        let Some(out) = n.output.first() else {
            continue;
        };
        if out == logits || out.is_empty() {
            continue;
        }
        let chosen = match pattern {
            Some(p) => glob_match(p, out) || glob_match(p, n.name()),
            None => {
                let feeds_act = consumers.get(out.as_str()).is_some_and(|cs| {
                    cs.iter()
                        .any(|&(i, _)| ACTIVATIONS.contains(&g.nodes[i].op_type()))
                });
                let is_pre = match n.op_type() {
                    "Add" => n.input.iter().any(|i| {
                        producers.get(i.as_str()).is_some_and(|&p| {
                            matches!(g.nodes[p].op_type(), "MatMul" | "Conv" | "Gemm")
                        })
                    }),
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
        return Err(Error::flag(
            "--noise-layers",
            match pattern {
                Some(p) => format!("the pattern '{p}' matches no value or node"),
                None => "the model has no hidden pre-activation feeding an activation".into(),
            },
        ));
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
    /// ε is a float graph input named [`eps_name`], filled by the caller before every run:
    /// dims [N, per-sample...], or [K, N, per-sample...] when the data input was replicated
    /// K times along the batch (the validation step), so that the one dynamic dimension is
    /// always the number of samples. A site whose per-sample shape is not static gets
    /// `RandomNormalLike` with `fallback_seed` instead.
    Input {
        replicas: Option<usize>,
        fallback_seed: u64,
    },
}

/// The shape of the log σ parameter of site `u`: a scalar, or with `per_channel` one value
/// per channel, shaped to broadcast against `u` ([C] for a feature axis that is last,
/// [C, 1, …] for axis 1 of a Conv or BatchNormalization output).
fn sigma_dims(
    g: &Graph,
    types: &crate::ir::infer::Types,
    u: &str,
    per_channel: bool,
) -> Result<Vec<i64>> {
    if !per_channel {
        return Ok(vec![]);
    }
    let shape = types.shape(u).cloned().unwrap_or_default();
    let rank = shape.len();
    let by_axis_1 = g.producers().get(u).is_some_and(|&p| {
        matches!(
            g.nodes[p].op_type(),
            "Conv" | "ConvTranspose" | "BatchNormalization"
        )
    });
    let axis = if by_axis_1 { 1 } else { rank.saturating_sub(1) };
    match shape.get(axis).copied().flatten() {
        Some(c) if axis >= 1 => {
            let mut dims = vec![c];
            dims.extend(std::iter::repeat_n(1, rank - 1 - axis));
            Ok(dims)
        }
        _ => Err(Error::flag(
            "--sigma-per-channel",
            format!(
                "noise site '{u}' has no channel axis of static size (axis {axis} of a rank-{rank} value)"
            ),
        )),
    }
}

/// Insert h = u + exp(s)·ε at each site. s is a scalar per site, or with `per_channel` a
/// vector over the site's channels ([`sigma_dims`]); `log_sigma(site, count)` gives its
/// `count` values (the new initializers are named by [`param_name`]). Returns the
/// parameter names.
pub fn insert(
    g: &mut Graph,
    sites: &[String],
    per_channel: bool,
    log_sigma: &dyn Fn(&str, usize) -> Vec<f32>,
    draw: Draw,
) -> Result<Vec<String>> {
    let types = crate::ir::infer::infer(g);
    let mut names = vec![];
    let dims = sites
        .iter()
        .map(|u| sigma_dims(g, &types, u, per_channel))
        .collect::<Result<Vec<_>>>()?;
    let mut b = Builder::new(g, "cross-noise");
    for (i, u) in sites.iter().enumerate() {
        let p = param_name(u);
        b.prefix = format!(
            "noise/{}/",
            p.trim_start_matches("noise.")
                .trim_end_matches(".log_sigma")
        );
        let count = dims[i].iter().product::<i64>() as usize;
        let values = log_sigma(u, count);
        if values.len() != count {
            return Err(Error::msg(format!(
                "noise site '{u}': {} values of log σ where its shape {:?} takes {count}",
                values.len(),
                dims[i]
            )));
        }
        let mut t = tensor::<f32>(&p, &dims[i], &values);
        t.name = Some(p.clone());
        b.patch.initializers.push(t);
        let sigma = b.op("Exp", &[&p]);
        let static_shape = || {
            types
                .shape(u)
                .and_then(|s| s[1..].iter().copied().collect::<Option<Vec<i64>>>())
        };
        let draw = match draw {
            Draw::Input {
                replicas,
                fallback_seed,
            } => match static_shape() {
                Some(shape) => {
                    let name = eps_name(&p);
                    let mut dims: Vec<Dim> =
                        replicas.iter().map(|&k| Dim::Fixed(k as i64)).collect();
                    dims.push(Dim::Param("N".into()));
                    dims.extend(shape.iter().map(|&d| Dim::Fixed(d)));
                    b.patch
                        .add_inputs
                        .push(value_info(&name, DataType::Float as i32, &dims));
                    let eps = if replicas.is_some() {
                        let su = b.op("Shape", &[u]);
                        b.op("Reshape", &[&name, &su])
                    } else {
                        name
                    };
                    let se = b.op("Mul", &[&eps, &sigma]);
                    let h = b.op("Add", &[u, &se]);
                    b.patch.replace.push((u.clone(), h));
                    names.push(p);
                    continue;
                }
                None => Draw::Random(fallback_seed),
            },
            other => other,
        };
        let eps = match draw {
            Draw::Input { .. } => unreachable!("resolved above"),
            Draw::Random(seed) => {
                // tract picks RandomNormalLike over RandomNormal by the node name's "Like" suffix.
                let name = b.fresh("RandomNormalLike");
                let out = b.fresh("eps");
                let mut n = crate::proto::make_node(
                    "RandomNormalLike",
                    &name,
                    &[u],
                    &[&out],
                    vec![attr_float(
                        "seed",
                        (seed.wrapping_add(i as u64 * 7919) % 1_000_000) as f32,
                    )],
                );
                n.doc_string = Some("regraft:cross-noise".into());
                b.patch.nodes.push(n);
                out
            }
            Draw::Fixed { k, seed } => {
                let shape = static_shape().ok_or_else(|| {
                    Error::msg(format!(
                        "the MC predictive needs the per-sample shape of '{u}' statically"
                    ))
                })?;
                let per: usize = shape.iter().product::<i64>() as usize;
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                    seed.wrapping_add(i as u64),
                );
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

/// xoshiro256++ (Blackman & Vigna), seeded through splitmix64.
struct Xoshiro([u64; 4]);

impl Xoshiro {
    fn new(key: &[u64]) -> Xoshiro {
        let mut z = 0x2545_f491_4f6c_dd1du64;
        for &k in key {
            z = splitmix(z ^ k);
        }
        let mut s = [0u64; 4];
        for v in s.iter_mut() {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            *v = splitmix(z);
        }
        Xoshiro(s)
    }
    #[inline]
    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in (0, 1).
    #[inline]
    fn open01(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Tables of the 128-layer ziggurat for N(0, 1) (Marsaglia & Tsang, 2000), for 25-bit
/// signed uniforms: a 32-bit word gives the layer (low 7 bits) and the abscissa (high 25
/// bits), so one xoshiro output makes two draws.
struct Ziggurat {
    k: [u32; 128],
    w: [f64; 128],
    f: [f64; 128],
}

const ZIG_R: f64 = 3.442_619_855_899;

impl Ziggurat {
    fn get() -> &'static Ziggurat {
        static Z: std::sync::OnceLock<Ziggurat> = std::sync::OnceLock::new();
        Z.get_or_init(|| {
            let m = (1u64 << 24) as f64;
            let v = 9.912_563_035_262_17e-3;
            let (mut k, mut w, mut f) = ([0u32; 128], [0f64; 128], [0f64; 128]);
            let mut dn = ZIG_R;
            let mut tn = dn;
            let q = v / (-0.5 * dn * dn).exp();
            k[0] = ((dn / q) * m) as u32;
            w[0] = q / m;
            w[127] = dn / m;
            f[0] = 1.0;
            f[127] = (-0.5 * dn * dn).exp();
            for i in (1..=126).rev() {
                dn = (-2.0 * (v / dn + (-0.5 * dn * dn).exp()).ln()).sqrt();
                k[i + 1] = ((dn / tn) * m) as u32;
                tn = dn;
                f[i] = (-0.5 * dn * dn).exp();
                w[i] = dn / m;
            }
            Ziggurat { k, w, f }
        })
    }

    /// One draw from a 32-bit word; the rare rejections draw more from `rng`.
    #[inline(always)]
    fn sample(&self, bits: u32, rng: &mut Xoshiro) -> f32 {
        let hz = (bits as i32) >> 7;
        let iz = (bits & 127) as usize;
        if hz.unsigned_abs() < self.k[iz] {
            return (hz as f64 * self.w[iz]) as f32;
        }
        self.slow(hz, iz, rng)
    }

    #[cold]
    #[inline(never)]
    fn slow(&self, mut hz: i32, mut iz: usize, rng: &mut Xoshiro) -> f32 {
        loop {
            let x = hz as f64 * self.w[iz];
            if hz.unsigned_abs() < self.k[iz] {
                return x as f32;
            }
            if iz == 0 {
                // The tail beyond R.
                let t = loop {
                    let a = -rng.open01().ln() / ZIG_R;
                    let b = -rng.open01().ln();
                    if b + b >= a * a {
                        break ZIG_R + a;
                    }
                };
                return if hz > 0 { t as f32 } else { -t as f32 };
            }
            if self.f[iz] + rng.open01() * (self.f[iz - 1] - self.f[iz]) < (-0.5 * x * x).exp() {
                return x as f32;
            }
            let bits = rng.next() as u32;
            hz = (bits as i32) >> 7;
            iz = (bits & 127) as usize;
        }
    }
}

/// Fill `out` with independent N(0, 1) draws determined by `key` (e.g. seed, step, site):
/// the same key always gives the same values. About 2 ns per draw.
pub fn fill_normal(out: &mut [f32], key: &[u64]) {
    let z = Ziggurat::get();
    let mut rng = Xoshiro::new(key);
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        let u = rng.next();
        p[0] = z.sample(u as u32, &mut rng);
        p[1] = z.sample((u >> 32) as u32, &mut rng);
    }
    for o in pairs.into_remainder() {
        let u = rng.next();
        *o = z.sample(u as u32, &mut rng);
    }
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

#[cfg(test)]
mod tests {
    use super::fill_normal;

    #[test]
    fn fill_normal_is_standard_normal_and_keyed() {
        let n = 1 << 20;
        let mut v = vec![0f32; n];
        fill_normal(&mut v, &[1, 2, 3]);
        let nf = n as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / nf;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / nf;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / nf / (var * var);
        // Standard errors: mean 1e-3, variance 1.4e-3, kurtosis 4.8e-3.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 7e-3, "variance {var}");
        assert!((kurt - 3.0).abs() < 3e-2, "kurtosis {kurt}");
        // Tail and central probabilities: P(|x| > 3) = 0.0026998, P(|x| < 0.5) = 0.382925.
        let tail = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / nf;
        let mid = v.iter().filter(|x| x.abs() < 0.5).count() as f64 / nf;
        assert!((tail - 0.0026998).abs() < 3e-4, "tail {tail}");
        assert!((mid - 0.382925).abs() < 3e-3, "centre {mid}");
        // Symmetric.
        let pos = v.iter().filter(|&&x| x > 0.0).count() as f64 / nf;
        assert!((pos - 0.5).abs() < 3e-3, "positive fraction {pos}");
        // Keyed: same key, same draws; another key, other draws.
        let mut a = vec![0f32; 1000];
        let mut b = vec![0f32; 1000];
        fill_normal(&mut a, &[1, 2, 3]);
        assert_eq!(a[..], v[..1000]);
        fill_normal(&mut b, &[1, 2, 4]);
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 5);
    }
}
