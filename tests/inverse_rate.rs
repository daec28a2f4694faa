//! Issue #5, part 1: the inverse-rate (PAC-Chernoff) subgraph of
//! src/regularizers/inverse_rate.rs against a direct f64 computation of METHODS.md §1.
//!
//! - The subgraph alone (`InverseRate::build` on a graph whose input is the per-sample
//!   loss vector ℓ, run in ONNX Runtime, f64 and f32, opsets 18 and 13): objective, Ĵ, λ*
//!   and the regularizer value for every ρ ∈ {0, 0.25, 0.5, 1}, batch sizes
//!   {1, 2, 7, 13, 64} (odd sizes, a single sample, the short last batch: the graph's
//!   batch dim is symbolic) and λ ∈ {0.01, 0.5, 1, 2}, in fixed and grid mode.
//! - Its gradient w.r.t. ℓ (`autodiff::differentiate`) against central finite
//!   differences in f64, and against the closed form.
//! - The small-λ limit: ρ = 1, λ = 1e-3 … 1e-5 → objective − (mean ℓ + λ/2·Var ℓ) =
//!   −λ²·κ₃/6 + O(λ³), κ₃ the third central moment.
//! - Large losses (ℓ up to 90, λ = 2) stay finite in f32.
//! - The whole `regraft grad` path on models/mlp.onnx with a short odd batch: the loss
//!   equals the formula on the model's own per-sample cross-entropies, and each
//!   parameter gradient equals Σᵢ ∂obj/∂ℓᵢ · ∇ℓᵢ with ∇ℓᵢ from the plain `regraft grad`
//!   model run on sample i alone.
//! - The paper's diagnostic: eval.onnx's `inverse_rate.weights` output equals
//!   wᵢ = 1 − pᵢ^λ / mean(p^λ) on the model's own probabilities, and is absent without
//!   the regularizer; for ρ = 1 the regularizer's gradient w.r.t. ℓᵢ is wᵢ/m.

mod common;
#[path = "common/gradcheck.rs"]
mod gradcheck;

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use regraft::ir::{Builder, Graph};
use regraft::proto::{DataType, Dim, ModelProto, value_info};
use regraft::regularizers::{InverseRate, LambdaMode};
use regraft::runtime::data::{Labels, load_npz};

const RHOS: [f64; 4] = [0.0, 0.25, 0.5, 1.0];
const BATCHES: [usize; 5] = [1, 2, 7, 13, 64];
const LAMBDAS: [f64; 4] = [0.01, 0.5, 1.0, 2.0];
const F64: i32 = DataType::Double as i32;
const F32: i32 = DataType::Float as i32;

// ---------------------------------------------------------------------------------------
// The reference: METHODS.md §1 written out in f64.

fn k_of(m: usize, rho: f64) -> usize {
    ((m as f64 * (1.0 + rho) / 2.0).floor() as usize).max(1)
}

fn lse(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let mx = v.clone().fold(f64::NEG_INFINITY, f64::max);
    mx + v.map(|x| (x - mx).exp()).sum::<f64>().ln()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The objective at one λ and everything the subgraph reports, with the closed-form
/// gradient of the objective w.r.t. ℓ.
#[derive(Clone, Debug)]
struct Reference {
    objective: f64,
    j: f64,
    lambda: f64,
    reg: f64,
    grad: Vec<f64>,
}

fn reference_at(l: &[f64], rho: f64, lam: f64) -> Reference {
    let m = l.len();
    let k = k_of(m, rho);
    let (s1, s2) = (&l[..k], &l[m - k..]);
    let mean2 = mean(s2);
    let z = lse(s1.iter().map(|&x| -lam * x));
    let j = z - (k as f64).ln() + lam * mean2;
    let objective = mean2 + j / lam;
    // obj = 2·mean₂ + (1/λ)·LSE(−λℓ[S1]) − ln k/λ.
    let mut grad = vec![0.0; m];
    for g in &mut grad[m - k..] {
        *g += 2.0 / k as f64;
    }
    for (i, &x) in s1.iter().enumerate() {
        grad[i] -= (-lam * x - z).exp();
    }
    Reference {
        objective,
        j,
        lambda: lam,
        reg: objective - mean(l),
        grad,
    }
}

/// Grid mode: λ* = argmin over the grid of (s + Ĵ(λ))/λ, s = ln(1/δ)/n. Returns the
/// reference at every grid point and the rates.
fn reference_grid(l: &[f64], cfg: &InverseRate) -> (Vec<Reference>, Vec<f64>) {
    let s = (1.0 / cfg.delta).ln() / cfg.n_train.expect("n") as f64;
    let refs: Vec<Reference> = cfg
        .grid
        .iter()
        .map(|&lam| reference_at(l, cfg.rho, lam))
        .collect();
    let rates = refs.iter().map(|r| (s + r.j) / r.lambda).collect();
    (refs, rates)
}

// ---------------------------------------------------------------------------------------
// The subgraph as a model: input `l` [N], outputs objective, J, lambda, reg (scalars) and
// optionally `l`'s gradient.

const OUTS: [&str; 4] = ["objective", "J", "lambda", "reg"];

fn subgraph_model(cfg: &InverseRate, dt: i32, opset: i64, with_grad: bool) -> ModelProto {
    let input = value_info("l", dt, &[Dim::Param("N".into())]);
    let mut g = Graph::from_model(gradcheck::model(opset, vec![], vec![input], vec![], vec![]));
    let mut b = Builder::new(&g, "inverse-rate");
    b.prefix = "inverse_rate/".into();
    let o = cfg
        .build(&mut b, opset, dt, "l", None)
        .expect("InverseRate::build");
    for (name, v) in OUTS.iter().zip([&o.objective, &o.j, &o.lambda, &o.reg]) {
        b.node_to("Identity", &[v], &[name], vec![]);
    }
    let patch = b.finish();
    g.apply(patch).expect("the subgraph applies");
    g.outputs = OUTS.iter().map(|n| value_info(n, dt, &[])).collect();
    if with_grad {
        let grads = regraft::autodiff::differentiate(&mut g, "objective", &["l".to_string()])
            .expect("differentiate the objective");
        // A fixed name for the gradient output.
        let id = regraft::proto::make_node(
            "Identity",
            "grad_out",
            &[&grads[0]],
            &["l_grad_out"],
            vec![],
        );
        g.nodes.push(id);
        g.outputs
            .push(value_info("l_grad_out", dt, &[Dim::Param("N".into())]));
    }
    g.remove_dead();
    g.check("inverse-rate test").expect("a valid graph");
    g.to_model()
}

fn session_of(m: &ModelProto) -> Session {
    gradcheck::new_session(&m.encode_to_vec()).expect("the model loads in ONNX Runtime")
}

fn feed(l: &[f64], dt: i32) -> Vec<(String, DynValue)> {
    let v: DynValue = if dt == F64 {
        Tensor::from_array((vec![l.len()], l.to_vec()))
            .unwrap()
            .into_dyn()
    } else {
        let v: Vec<f32> = l.iter().map(|&x| x as f32).collect();
        Tensor::from_array((vec![l.len()], v)).unwrap().into_dyn()
    };
    vec![("l".to_string(), v)]
}

fn run(s: &mut Session, l: &[f64], dt: i32) -> HashMap<String, ArrayD<f64>> {
    gradcheck::run_outputs(s, feed(l, dt)).expect("the subgraph runs")
}

fn scalar(outs: &HashMap<String, ArrayD<f64>>, name: &str) -> f64 {
    let a = &outs[name];
    assert_eq!(a.len(), 1, "{name} is a scalar");
    a.iter().copied().next().unwrap()
}

/// Random per-sample losses of three kinds: uniform in [0, 5), exponential with mean 1
/// (skewed, like cross-entropies), and large ones in [30, 90).
fn losses(rng: &mut StdRng, kind: usize, m: usize) -> Vec<f64> {
    (0..m)
        .map(|_| match kind {
            0 => rng.random_range(0.0..5.0),
            1 => -(1.0 - rng.random_range(0.0..1.0f64)).ln(),
            _ => rng.random_range(30.0..90.0),
        })
        .collect()
}

/// The values rounded to the element type fed to the graph.
fn as_fed(l: &[f64], dt: i32) -> Vec<f64> {
    if dt == F64 {
        l.to_vec()
    } else {
        l.iter().map(|&x| x as f32 as f64).collect()
    }
}

/// Tolerance of a value of magnitude `v` computed through J/λ: f32 rounds Ĵ (whose parts
/// are about ln k + λ·max ℓ) to ~1e-7 relative, and J/λ scales that by 1/λ.
fn tol(dt: i32, v: f64, l: &[f64], lam: f64) -> f64 {
    let mx = l.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let scale = 1.0 + (l.len() as f64).ln() + lam * mx;
    let (rel, jrel) = if dt == F64 {
        (2e-13, 2e-14)
    } else {
        (4e-7, 2e-7)
    };
    rel * (1.0 + v.abs() + mx) + jrel * scale / lam
}

// The largest |Δ|/tolerance seen by this thread's checks (printed by `finish`).
thread_local! {
    static WORST: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

fn check_close(what: &str, got: f64, want: f64, t: f64, bad: &mut Vec<String>) -> f64 {
    let e = (got - want).abs();
    WORST.with(|w| w.set(w.get().max(e / t)));
    if e.is_nan() || e > t {
        bad.push(format!(
            "{what}: graph {got:.10}, formula {want:.10} (|Δ| {e:.3e} > {t:.3e})"
        ));
    }
    e
}

fn finish(name: &str, checked: usize, bad: Vec<String>) {
    assert!(checked > 0, "{name}: nothing was checked");
    eprintln!(
        "{name}: {checked} checks, largest |Δ|/tolerance {:.3}",
        WORST.with(|w| w.replace(0.0))
    );
    assert!(
        bad.is_empty(),
        "{name}: {} of {checked} values differ:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Values

#[test]
fn fixed_lambda_values_equal_the_formula() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut bad = vec![];
    let mut checked = 0;
    for (dt, opset) in [(F64, 18), (F32, 18), (F64, 13), (F32, 13)] {
        for &rho in &RHOS {
            for &lam in &LAMBDAS {
                let cfg = InverseRate {
                    rho,
                    lambda: lam,
                    ..Default::default()
                };
                let mut s = session_of(&subgraph_model(&cfg, dt, opset, false));
                for &m in &BATCHES {
                    for kind in 0..3 {
                        let l = as_fed(&losses(&mut rng, kind, m), dt);
                        let outs = run(&mut s, &l, dt);
                        let r = reference_at(&l, rho, lam);
                        let lbl = format!(
                            "{} opset {opset} ρ={rho} λ={lam} m={m} losses#{kind}",
                            if dt == F64 { "f64" } else { "f32" }
                        );
                        for (name, want) in [
                            ("objective", r.objective),
                            ("J", r.j),
                            ("lambda", r.lambda),
                            ("reg", r.reg),
                        ] {
                            // J itself is not divided by λ.
                            let t = if name == "J" {
                                tol(dt, want, &l, 1.0) * lam.max(1.0)
                            } else {
                                tol(dt, want, &l, lam)
                            };
                            check_close(
                                &format!("{lbl} {name}"),
                                scalar(&outs, name),
                                want,
                                t,
                                &mut bad,
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    finish("fixed λ", checked, bad);
}

#[test]
fn grid_mode_picks_the_argmin_and_reports_it() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut bad = vec![];
    let mut checked = 0;
    let mut picked = std::collections::BTreeSet::new();
    for (dt, opset) in [(F64, 18), (F32, 18), (F64, 13)] {
        for &rho in &RHOS {
            // Small n makes s large and the argmin moves across the grid.
            for n in [20usize, 200, 100_000] {
                let cfg = InverseRate {
                    rho,
                    lambda_mode: LambdaMode::Grid,
                    n_train: Some(n),
                    ..Default::default()
                };
                let mut s = session_of(&subgraph_model(&cfg, dt, opset, false));
                for &m in &BATCHES {
                    for kind in 0..3 {
                        let l = as_fed(&losses(&mut rng, kind, m), dt);
                        let outs = run(&mut s, &l, dt);
                        let (refs, rates) = reference_grid(&l, &cfg);
                        let lbl = format!(
                            "{} opset {opset} ρ={rho} n={n} m={m} losses#{kind}",
                            if dt == F64 { "f64" } else { "f32" }
                        );
                        let lam = scalar(&outs, "lambda");
                        let Some(i) = cfg.grid.iter().position(|&g| (g - lam).abs() <= 1e-6 * g)
                        else {
                            bad.push(format!("{lbl}: λ* = {lam} is not a grid point"));
                            continue;
                        };
                        // The chosen rate is the minimum (up to rounding: near-ties may
                        // go either way in f32).
                        let best = rates.iter().copied().fold(f64::INFINITY, f64::min);
                        let exact = rates.iter().position(|&r| r == best).unwrap();
                        let rt = tol(dt, best, &l, cfg.grid[i]);
                        if rates[i] - best > rt {
                            bad.push(format!(
                                "{lbl}: λ* = {lam} has rate {} but λ = {} has {best}",
                                rates[i], cfg.grid[exact]
                            ));
                        }
                        if dt == F64 && i != exact {
                            bad.push(format!(
                                "{lbl}: f64 picked λ = {lam}, the argmin is {}",
                                cfg.grid[exact]
                            ));
                        }
                        picked.insert(i);
                        let r = &refs[i];
                        for (name, want, t) in [
                            ("objective", r.objective, tol(dt, r.objective, &l, r.lambda)),
                            ("J", r.j, tol(dt, r.j, &l, 1.0) * r.lambda.max(1.0)),
                            ("reg", r.reg, tol(dt, r.reg, &l, r.lambda)),
                        ] {
                            check_close(
                                &format!("{lbl} {name}"),
                                scalar(&outs, name),
                                want,
                                t,
                                &mut bad,
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        picked.len() >= 3,
        "the cases exercise too few grid points: {picked:?}"
    );
    finish("grid λ", checked, bad);
}

#[test]
fn large_losses_stay_finite_in_f32() {
    // e^{−λℓ} underflows f32 for λℓ > ~104; the log-sum-exp must not.
    let mut rng = StdRng::seed_from_u64(7);
    let mut bad = vec![];
    let mut checked = 0;
    for &rho in &RHOS {
        let cfg = InverseRate {
            rho,
            lambda: 2.0,
            ..Default::default()
        };
        let mut s = session_of(&subgraph_model(&cfg, F32, 18, true));
        for &m in &BATCHES {
            let l: Vec<f64> = (0..m).map(|_| rng.random_range(60.0..200.0f64)).collect();
            let l = as_fed(&l, F32);
            let outs = run(&mut s, &l, F32);
            let r = reference_at(&l, rho, 2.0);
            let lbl = format!("ρ={rho} m={m}");
            check_close(
                &format!("{lbl} objective"),
                scalar(&outs, "objective"),
                r.objective,
                tol(F32, r.objective, &l, 2.0),
                &mut bad,
            );
            let g = &outs["l_grad_out"];
            for (i, (&gi, &wi)) in g.iter().zip(&r.grad).enumerate() {
                check_close(&format!("{lbl} ∂obj/∂ℓ[{i}]"), gi, wi, 1e-5, &mut bad);
            }
            checked += 1;
        }
    }
    finish("large losses", checked, bad);
}

// ---------------------------------------------------------------------------------------
// Gradients

#[test]
fn gradients_pass_finite_differences_in_f64() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut bad = vec![];
    let mut checked = 0;
    let eps = 1e-6;
    let mut cfgs = vec![];
    for &rho in &RHOS {
        for &lam in &LAMBDAS {
            cfgs.push(InverseRate {
                rho,
                lambda: lam,
                ..Default::default()
            });
        }
        cfgs.push(InverseRate {
            rho,
            lambda_mode: LambdaMode::Grid,
            n_train: Some(200),
            ..Default::default()
        });
    }
    for cfg in &cfgs {
        let mut s = session_of(&subgraph_model(cfg, F64, 18, true));
        for &m in &BATCHES {
            for kind in 0..2 {
                let l = losses(&mut rng, kind, m);
                let outs = run(&mut s, &l, F64);
                let g: Vec<f64> = outs["l_grad_out"].iter().copied().collect();
                assert_eq!(g.len(), m);
                let lam = scalar(&outs, "lambda");
                let lbl = format!(
                    "{:?} ρ={} λ={lam} m={m} losses#{kind}",
                    cfg.lambda_mode, cfg.rho
                );
                // The closed form at the λ* the graph used.
                let r = reference_at(&l, cfg.rho, lam);
                for (i, (&gi, &want)) in g.iter().zip(&r.grad).enumerate() {
                    check_close(
                        &format!("{lbl} closed form [{i}]"),
                        gi,
                        want,
                        1e-10,
                        &mut bad,
                    );
                }
                // Central finite differences on up to 16 elements.
                let idx: Vec<usize> = if m <= 16 {
                    (0..m).collect()
                } else {
                    (0..16).map(|_| rng.random_range(0..m)).collect()
                };
                for i in idx {
                    let mut lp = l.clone();
                    lp[i] += eps;
                    let mut lm = l.clone();
                    lm[i] -= eps;
                    let op = run(&mut s, &lp, F64);
                    let om = run(&mut s, &lm, F64);
                    if scalar(&op, "lambda") != lam || scalar(&om, "lambda") != lam {
                        continue; // the grid argmin moved within ±eps: not differentiable here
                    }
                    let fd = (scalar(&op, "objective") - scalar(&om, "objective")) / (2.0 * eps);
                    check_close(
                        &format!("{lbl} finite differences [{i}]"),
                        g[i],
                        fd,
                        2e-7 + 2e-6 * fd.abs(),
                        &mut bad,
                    );
                    checked += 1;
                }
            }
        }
    }
    finish("finite differences", checked, bad);
}

#[test]
fn f32_gradients_equal_the_closed_form() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut bad = vec![];
    let mut checked = 0;
    for &rho in &RHOS {
        for &lam in &LAMBDAS {
            let cfg = InverseRate {
                rho,
                lambda: lam,
                ..Default::default()
            };
            let mut s = session_of(&subgraph_model(&cfg, F32, 18, true));
            for &m in &BATCHES {
                let l = as_fed(&losses(&mut rng, 1, m), F32);
                let outs = run(&mut s, &l, F32);
                let r = reference_at(&l, rho, lam);
                for (i, (&gi, &wi)) in outs["l_grad_out"].iter().zip(&r.grad).enumerate() {
                    check_close(
                        &format!("ρ={rho} λ={lam} m={m} [{i}]"),
                        gi,
                        wi,
                        2e-7 + 1e-6 * wi.abs(),
                        &mut bad,
                    );
                    checked += 1;
                }
            }
        }
    }
    finish("f32 gradients", checked, bad);
}

#[test]
fn rho_one_regularizer_gradient_is_the_implicit_weight_over_m() {
    // For ρ = 1: ∂(objective − mean ℓ)/∂ℓᵢ = wᵢ/m, wᵢ = 1 − pᵢ^λ / mean(p^λ), pᵢ = e^{−ℓᵢ}.
    let mut rng = StdRng::seed_from_u64(10);
    let mut bad = vec![];
    let mut checked = 0;
    for &lam in &LAMBDAS {
        let cfg = InverseRate {
            rho: 1.0,
            lambda: lam,
            ..Default::default()
        };
        let mut s = session_of(&subgraph_model(&cfg, F64, 18, true));
        for &m in &BATCHES {
            let l = losses(&mut rng, 1, m);
            let outs = run(&mut s, &l, F64);
            let pl: Vec<f64> = l.iter().map(|&x| (-lam * x).exp()).collect();
            let mp = mean(&pl);
            for (i, &gi) in outs["l_grad_out"].iter().enumerate() {
                let w = 1.0 - pl[i] / mp;
                check_close(
                    &format!("λ={lam} m={m} [{i}]"),
                    gi - 1.0 / m as f64,
                    w / m as f64,
                    1e-12,
                    &mut bad,
                );
                checked += 1;
            }
        }
    }
    finish("ρ = 1 weights", checked, bad);
}

// ---------------------------------------------------------------------------------------
// The small-λ limit

#[test]
fn small_lambda_approaches_mean_plus_half_lambda_variance() {
    let mut rng = StdRng::seed_from_u64(11);
    for &m in &[7usize, 13, 64] {
        // Exponential losses: skewed, so the λ² term −λ²κ₃/6 is visible.
        let l = losses(&mut rng, 1, m);
        let mu = mean(&l);
        let var = l.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / m as f64;
        let k3 = l.iter().map(|x| (x - mu).powi(3)).sum::<f64>() / m as f64;
        let k4 = l.iter().map(|x| (x - mu).powi(4)).sum::<f64>() / m as f64;
        for &lam in &[1e-3, 1e-4, 1e-5] {
            let cfg = InverseRate {
                rho: 1.0,
                lambda: lam,
                ..Default::default()
            };
            let mut s = session_of(&subgraph_model(&cfg, F64, 18, false));
            let obj = scalar(&run(&mut s, &l, F64), "objective");
            let diff = obj - (mu + lam / 2.0 * var);
            // Next terms of the cumulant expansion, and f64 rounding of Ĵ divided by λ.
            let second = -lam * lam * k3 / 6.0;
            let bound = lam.powi(3) * (k4 + 3.0 * var * var) / 24.0 * 2.0
                + 1e-15 * (1.0 + (m as f64).ln() + mu) / lam;
            assert!(
                (diff - second).abs() <= bound,
                "m={m} λ={lam}: objective − (mean + λ/2·Var) = {diff:e}; −λ²κ₃/6 = {second:e}, allowed {bound:e}"
            );
            assert!(
                diff.abs() <= lam * lam * (k3.abs() / 6.0 + 1.0) + 1e-15 * (2.0 + mu) / lam,
                "m={m} λ={lam}: |objective − (mean + λ/2·Var)| = {:e} is not O(λ²)",
                diff.abs()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Through `regraft grad` on models/mlp.onnx

fn digits_batch(m: usize) -> (Vec<f32>, Vec<i64>) {
    let ds = load_npz(&common::root().join("tests/data/digits_train.npz"), false).expect("digits");
    let Labels::Classes(y) = &ds.y else {
        panic!("class labels")
    };
    (ds.x[..m * 64].to_vec(), y[..m].to_vec())
}

fn xy_feeds(x: &[f32], y: &[i64]) -> Vec<(String, DynValue)> {
    let m = y.len();
    vec![
        (
            "x".into(),
            Tensor::from_array((vec![m, 64], x.to_vec()))
                .unwrap()
                .into_dyn(),
        ),
        (
            "labels".into(),
            Tensor::from_array((vec![m], y.to_vec()))
                .unwrap()
                .into_dyn(),
        ),
    ]
}

/// Per-sample cross-entropies in f64 from f32 logits.
fn cross_entropies(logits: &[f32], c: usize, y: &[i64]) -> Vec<f64> {
    logits
        .chunks_exact(c)
        .zip(y)
        .map(|(row, &t)| lse(row.iter().map(|&v| v as f64)) - row[t as usize] as f64)
        .collect()
}

fn grad_model(dir: &Path, name: &str, extra: &[&str]) -> Session {
    let out = dir.join(name);
    let mut args = vec!["grad", "models/mlp.onnx", "-o"];
    let o = out.to_str().unwrap().to_string();
    args.push(&o);
    args.extend_from_slice(extra);
    let r = common::regraft(&args);
    assert!(
        r.status.success(),
        "regraft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&r.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    gradcheck::new_session(&bytes).expect("the gradient model loads")
}

#[test]
fn regraft_grad_on_the_mlp_matches_the_formula_and_the_chain_rule() {
    let m = 13; // odd and short: k = ⌊13·(1+ρ)/2⌋
    let (x, y) = digits_batch(m);
    let tmp = common::tempdir();
    // The forward model's logits → per-sample losses in f64.
    let mut fwd =
        gradcheck::new_session(&std::fs::read(common::root().join("models/mlp.onnx")).unwrap())
            .unwrap();
    let outs = fwd
        .run(vec![(
            "x".to_string(),
            Tensor::from_array((vec![m, 64], x.clone()))
                .unwrap()
                .into_dyn(),
        )])
        .unwrap();
    let (shape, logits) = outs["logits"].try_extract_tensor::<f32>().unwrap();
    let l = cross_entropies(logits, shape[1] as usize, &y);
    drop(outs);
    // ∇θ ℓᵢ from the plain gradient model on sample i alone.
    let mut plain = grad_model(tmp.path(), "plain.onnx", &[]);
    let per_sample: Vec<HashMap<String, ArrayD<f64>>> = (0..m)
        .map(|i| {
            let o = gradcheck::run_outputs(
                &mut plain,
                xy_feeds(&x[i * 64..(i + 1) * 64], &y[i..i + 1]),
            )
            .unwrap();
            let li = o["loss"].iter().copied().next().unwrap();
            assert!(
                (li - l[i]).abs() <= 1e-5 * (1.0 + l[i]),
                "sample {i}: plain loss {li}, formula {}",
                l[i]
            );
            o
        })
        .collect();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "fixed ρ=0.5 λ=0.5".into(),
            vec!["--rho", "0.5", "--lambda", "0.5"],
        ),
        ("fixed ρ=0 λ=2".into(), vec!["--rho", "0", "--lambda", "2"]),
        ("fixed ρ=1 λ=1".into(), vec!["--rho", "1", "--lambda", "1"]),
        (
            "grid ρ=0.25 n=50".into(),
            vec!["--rho", "0.25", "--lambda-mode", "grid", "--n-train", "50"],
        ),
    ];
    let mut bad = vec![];
    for (ci, (lbl, flags)) in cases.iter().enumerate() {
        let mut args = vec!["--regularizer", "inverse-rate"];
        args.extend(flags.iter().copied());
        let mut s = grad_model(tmp.path(), &format!("ir{ci}.onnx"), &args);
        let o = gradcheck::run_outputs(&mut s, xy_feeds(&x, &y)).unwrap();
        let loss = o["loss"].iter().copied().next().unwrap();
        let rho: f64 = flags[1].parse().unwrap();
        let r = if flags.contains(&"grid") {
            let cfg = InverseRate {
                rho,
                lambda_mode: LambdaMode::Grid,
                n_train: Some(50),
                ..Default::default()
            };
            let (refs, rates) = reference_grid(&l, &cfg);
            let best = rates.iter().copied().fold(f64::INFINITY, f64::min);
            refs[rates.iter().position(|&v| v == best).unwrap()].clone()
        } else {
            reference_at(&l, rho, flags[3].parse().unwrap())
        };
        check_close(
            &format!("{lbl} loss"),
            loss,
            r.objective,
            4e-6 * (1.0 + r.objective.abs()) + 2e-7 / r.lambda,
            &mut bad,
        );
        // Chain rule: ∇θ obj = Σᵢ ∂obj/∂ℓᵢ · ∇θ ℓᵢ.
        let mut n_grads = 0;
        for (name, g) in &o {
            if name == "loss" {
                continue;
            }
            n_grads += 1;
            let mut want = ArrayD::<f64>::zeros(IxDyn(g.shape()));
            for (i, ps) in per_sample.iter().enumerate() {
                want.scaled_add(r.grad[i], &ps[name]);
            }
            let err = (g - &want).mapv(|v| v * v).sum().sqrt();
            let norm = want.mapv(|v| v * v).sum().sqrt();
            if err.is_nan() || err > 2e-5 * norm + 1e-8 {
                bad.push(format!(
                    "{lbl} {name}: ‖regraft − chain rule‖ = {err:.3e}, ‖chain rule‖ = {norm:.3e}"
                ));
            }
        }
        assert_eq!(n_grads, 6, "{lbl}: the MLP has six parameter gradients");
    }
    finish("regraft grad", cases.len(), bad);
}

// ---------------------------------------------------------------------------------------
// eval.onnx's implicit weights

fn eval_outputs(dir: &Path, x: &[f32], y: &[i64]) -> HashMap<String, ArrayD<f64>> {
    let state = regraft::runtime::checkpoint::load(&dir.join("state.safetensors")).expect("state");
    let mut s = gradcheck::new_session(&std::fs::read(dir.join("eval.onnx")).unwrap()).unwrap();
    let mut feeds = xy_feeds(x, y);
    let names: Vec<String> = s.inputs().iter().map(|i| i.name().to_string()).collect();
    for n in names.iter().filter(|n| *n != "x" && *n != "labels") {
        let (shape, data) = &state.tensors[n];
        feeds.push((
            n.clone(),
            Tensor::from_array((shape.clone(), data.clone()))
                .unwrap()
                .into_dyn(),
        ));
    }
    gradcheck::run_outputs(&mut s, feeds).expect("eval.onnx runs")
}

#[test]
fn eval_weights_equal_the_formula() {
    let tmp = common::tempdir();
    let m = 37;
    let (x, y) = digits_batch(m);
    let plain = tmp.path().join("plain");
    let r = common::regraft(&["rewrite", "models/mlp.onnx", "-o", plain.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let o = eval_outputs(&plain, &x, &y);
    assert!(
        !o.contains_key("inverse_rate.weights"),
        "eval.onnx has inverse_rate.weights without the regularizer"
    );
    for lam in [0.1, 0.5, 1.0, 2.0] {
        let dir = tmp.path().join(format!("ir{lam}"));
        let ls = lam.to_string();
        let r = common::regraft(&[
            "rewrite",
            "models/mlp.onnx",
            "--regularizer",
            "inverse-rate",
            "--rho",
            "0.5",
            "--lambda",
            &ls,
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let o = eval_outputs(&dir, &x, &y);
        let w = o
            .get("inverse_rate.weights")
            .expect("eval.onnx outputs inverse_rate.weights");
        assert_eq!(w.shape(), &[m]);
        // pᵢ: the model's probability of the true class, from its logits in f64.
        let logits: Vec<f32> = o["logits"].iter().map(|&v| v as f32).collect();
        let l = cross_entropies(&logits, 10, &y);
        let pl: Vec<f64> = l.iter().map(|&li| (-li).exp().powf(lam)).collect();
        let mp = mean(&pl);
        let mut bad = vec![];
        for (i, &wi) in w.iter().enumerate() {
            let want = 1.0 - pl[i] / mp;
            check_close(
                &format!("λ={lam} w[{i}]"),
                wi,
                want,
                2e-6 * (1.0 + want.abs()),
                &mut bad,
            );
        }
        // Weights average to zero; under-confident samples (low p) weigh positive.
        assert!(mean(&w.iter().copied().collect::<Vec<_>>()).abs() < 1e-5);
        let lo = (0..m).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        let hi = (0..m).min_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        assert!(
            w[lo] > 0.0 && w[hi] < 0.0,
            "λ={lam}: w of the worst sample {}, of the best {}",
            w[lo],
            w[hi]
        );
        finish(&format!("eval weights λ={lam}"), m, bad);
    }
}
