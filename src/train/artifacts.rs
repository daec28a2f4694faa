//! The artifacts `regraft rewrite` writes: `train_step.onnx` (forward, loss, backward and
//! optimizer update in one graph; parameters, optimizer state and buffers are inputs and
//! their updated values outputs) and `eval.onnx` (forward in inference mode plus
//! per-sample losses), with the state they share.

use std::collections::HashSet;

use crate::autodiff::{differentiate, reach::trainable_initializers};
use crate::error::{Error, Result};
use crate::ir::infer::infer;
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, Dim, ModelProto, NodeExt, TensorProto, attr_int, value_info};
use crate::regularizers::{LambdaMode, Regularizer};
use crate::train::grad::glob_match;
use crate::train::loss::{LossKind, add_loss, find_logits};
use crate::train::recipe::Recipe;

/// What a state tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    Param,
    Slot,
    Buffer,
}

/// One tensor of the training state: input name `name`, updated value `output`.
#[derive(Clone, Debug)]
pub struct StateEntry {
    pub name: String,
    pub output: String,
    pub kind: StateKind,
    pub dims: Vec<i64>,
    pub init: TensorProto,
}

pub struct Artifacts {
    pub train: Graph,
    pub eval: Graph,
    pub state: Vec<StateEntry>,
    /// The data input of the model and its declared dims.
    pub input: String,
    pub input_dims: Vec<Dim>,
    pub logits: String,
    /// Number of classes (cross-entropy) or output width, when known statically.
    pub classes: Option<i64>,
    /// Scalar diagnostics of the training step (regularizer value, Ĵ, λ*), logged per epoch.
    pub extras: Vec<String>,
    /// Cross-regularization: `val_step.onnx`, which updates the regularization parameters
    /// on the validation split, and its state (parameters and Adam slots). The training
    /// step reads the regularization parameters as inputs and never updates them.
    pub val: Option<ValStep>,
}

pub struct ValStep {
    pub graph: Graph,
    pub state: Vec<StateEntry>,
    /// Validation steps happen every `every` training steps.
    pub every: usize,
    pub lr: f32,
    /// Samples per validation step (None: the training batch size).
    pub batch: Option<usize>,
}

use crate::regularizers::inverse_rate::LOG_LAMBDA;

/// The optimizer update of one parameter `p` (initial value `t`, gradient `grad`): its
/// slots become inputs (zeros initially), and `p_new` and the slots' `*_new` values become
/// outputs and state entries. Shared by the training and validation steps.
#[allow(clippy::too_many_arguments)]
fn add_update(
    b: &mut Builder,
    opt: &crate::train::optim::OptimizerConfig,
    p: &str,
    grad: &str,
    t: &TensorProto,
    lr: &str,
    step: &str,
    outputs: &mut Vec<crate::proto::ValueInfoProto>,
    state: &mut Vec<StateEntry>,
) {
    let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d)).collect();
    let slots = opt.slots(p);
    let p_out = b.fresh_exact(&format!("{p}_new"));
    let slot_outs: Vec<String> = slots
        .iter()
        .map(|s| b.fresh_exact(&format!("{s}_new")))
        .collect();
    for s in &slots {
        b.patch
            .add_inputs
            .push(value_info(s, DataType::Float as i32, &dims));
    }
    opt.update(
        b,
        p,
        grad,
        t.dims.len(),
        lr,
        step,
        &slots,
        &p_out,
        &slot_outs,
    );
    outputs.push(value_info(&p_out, DataType::Float as i32, &dims));
    state.push(StateEntry {
        name: p.to_string(),
        output: p_out,
        kind: StateKind::Param,
        dims: t.dims.clone(),
        init: t.clone(),
    });
    for (s, so) in slots.iter().zip(slot_outs) {
        outputs.push(value_info(&so, DataType::Float as i32, &dims));
        let zeros =
            crate::proto::tensor::<f32>(s, &t.dims, &vec![0.0; crate::proto::numel(t) as usize]);
        state.push(StateEntry {
            name: s.clone(),
            output: so,
            kind: StateKind::Slot,
            dims: t.dims.clone(),
            init: zeros,
        });
    }
}

/// Differentiate the validation loss for the regularization parameters `reg` only, make
/// the weights `theta` plain inputs, and add the `opt` update of `reg`: the common tail of
/// every validation step. Returns the graph's state entries.
fn finish_val(
    mut e: Graph,
    reg: &[String],
    theta: &[String],
    opt: crate::train::optim::ValOptimizer,
) -> Result<(Graph, Vec<StateEntry>)> {
    let grads = differentiate(&mut e, VAL_LOSS, reg)?;
    let theta_here: Vec<String> = theta
        .iter()
        .filter(|t| e.initializer(t).is_some())
        .cloned()
        .collect();
    lift(&mut e, &theta_here);
    let reg_t = lift(&mut e, reg);
    let opt = opt.config();
    let mut b = Builder::new(&e, "validation-optimizer");
    b.prefix = "val_optim/".into();
    b.patch
        .add_inputs
        .push(value_info(VAL_LR, DataType::Float as i32, &[]));
    b.patch
        .add_inputs
        .push(value_info(VAL_STEP, DataType::Float as i32, &[]));
    let mut outputs = vec![value_info(VAL_LOSS, DataType::Float as i32, &[])];
    let mut state = vec![];
    for ((p, gname), t) in reg.iter().zip(&grads).zip(&reg_t) {
        add_update(
            &mut b,
            &opt,
            p,
            gname,
            t,
            VAL_LR,
            VAL_STEP,
            &mut outputs,
            &mut state,
        );
    }
    e.apply(b.finish())?;
    e.outputs = outputs;
    e.remove_dead();
    e.check("val_step")?;
    Ok((e, state))
}

/// The validation step of the inverse rate's `validated` λ: on a batch of the validation
/// split (inference-mode forward, no gradient to the weights), the estimated inverse rate
/// (s + Ĵ(λ))/λ, s = ln(1/δ)/n, is minimized over log λ by Adam. This is the criterion by
/// which the `grid` mode picks λ*, made continuous and evaluated on held-out samples: the
/// plain validation loss does not depend on λ at all, so it could not teach λ anything.
fn build_lambda_val(
    model: &ModelProto,
    recipe: &Recipe,
    ir: &crate::regularizers::InverseRate,
    logits: &str,
    theta: &[String],
) -> Result<ValStep> {
    let n = ir.n_train.ok_or_else(|| {
        Error::flag(
            "--lambda-mode validated",
            "needs the training-set size (regraft train fills it in)",
        )
    })?;
    let mut e = Graph::from_model(model.clone());
    to_inference(&mut e);
    e.initializers.push(crate::proto::tensor::<f32>(
        LOG_LAMBDA,
        &[],
        &[ir.lambda.ln() as f32],
    ));
    let head = add_loss(&mut e, recipe.loss, logits)?;
    let opset = e.opset();
    let mut b = Builder::new(&e, "inverse-rate-validation");
    b.prefix = "inverse_rate_val/".into();
    let o = ir.build(
        &mut b,
        opset,
        DataType::Float as i32,
        &head.per_sample,
        Some(LOG_LAMBDA),
    )?;
    let s = b.scalar_of(DataType::Float as i32, (1.0 / ir.delta).ln() / n as f64);
    let sj = b.op("Add", &[&o.j, &s]);
    let rate = b.op("Div", &[&sj, &o.lambda]);
    b.node_to("Identity", &[&rate], &[VAL_LOSS], vec![]);
    e.apply(b.finish())?;
    let reg = vec![LOG_LAMBDA.to_string()];
    let (e, state) = finish_val(e, &reg, theta, ir.val_optimizer)?;
    Ok(ValStep {
        graph: e,
        state,
        every: ir.every,
        lr: ir.val_lr,
        batch: None,
    })
}

/// Names of the validation step's scalar inputs and output.
pub const VAL_LR: &str = "val_lr";
pub const VAL_STEP: &str = "val_step";
pub const VAL_LOSS: &str = "val_loss";

/// Apply the cross-regularization reparametrization (noise sites or norm split) to a
/// graph; returns the names of the regularization parameters it added.
/// Noise sites read ε from graph inputs that the trainer fills ([`noise::Draw::Input`]);
/// `replicas` is K when the data input was replicated K times (the validation step).
///
/// [`noise::Draw::Input`]: crate::regularizers::noise::Draw::Input
fn cross_rewrite(
    g: &mut Graph,
    recipe: &Recipe,
    logits: &str,
    seed_offset: u64,
    replicas: Option<usize>,
) -> Result<Vec<String>> {
    match &recipe.regularizer {
        Regularizer::CrossNoise(c) => {
            let sites = crate::regularizers::noise::select_sites(g, c.layers.as_deref(), logits)?;
            let s0 = c.init_sigma.ln() as f32;
            let seed = recipe.seed.wrapping_mul(31).wrapping_add(seed_offset);
            let draw = crate::regularizers::noise::Draw::Input {
                replicas,
                fallback_seed: seed,
            };
            crate::regularizers::noise::insert(g, &sites, c.per_channel, &|_, n| vec![s0; n], draw)
        }
        Regularizer::CrossNorm(c) => {
            let w = crate::regularizers::norm::select(g, c.layers.as_deref())?;
            crate::regularizers::norm::reparametrize(g, &w, &|_| None)
        }
        _ => Ok(vec![]),
    }
}

/// The validation step: forward in inference mode with K noise draws per sample (the
/// input is replicated along the batch), probabilities averaged over the draws, the NLL
/// of the average (or the MSE for regression), gradients for the regularization
/// parameters only, and an update of them by the recipe's validation optimizer.
fn build_val(
    model: &ModelProto,
    recipe: &Recipe,
    logits: &str,
    input: &str,
    rank: usize,
    theta: &[String],
) -> Result<ValStep> {
    let (k, every, lr, opt, batch) = match &recipe.regularizer {
        Regularizer::CrossNoise(c) => (
            c.k,
            c.every,
            c.val_lr,
            c.val_optimizer,
            Some(c.val_batch.unwrap_or(recipe.batch_size.div_ceil(c.k))),
        ),
        Regularizer::CrossNorm(c) => (1, c.every, c.val_lr, c.val_optimizer, c.val_batch),
        _ => unreachable!("only cross-regularization has a validation step"),
    };
    if batch == Some(0) {
        return Err(Error::flag("regularizer.val_batch", "must be at least 1"));
    }
    let mut e = Graph::from_model(model.clone());
    to_inference(&mut e);
    if k > 1 {
        crate::regularizers::noise::replicate_input(&mut e, input, k, rank)?;
    }
    let reg = cross_rewrite(&mut e, recipe, logits, 1, (k > 1).then_some(k))?;
    let opset = e.opset();
    let label_dt = if recipe.loss == LossKind::Mse {
        DataType::Float as i32
    } else {
        DataType::Int64 as i32
    };
    let mut label_dims = vec![Dim::Param("N".into())];
    if recipe.loss == LossKind::Mse
        && let Some(s) = infer(&e).shape(logits)
    {
        label_dims.extend(
            s.iter()
                .skip(1)
                .map(|d| d.map(Dim::Fixed).unwrap_or(Dim::Param("C".into()))),
        );
    }
    let mut b = Builder::new(&e, "validation");
    b.prefix = "val/".into();
    b.patch
        .add_inputs
        .push(value_info(LABELS, label_dt, &label_dims));
    let loss_v = match recipe.loss {
        LossKind::CrossEntropy => {
            // −mean_n log((1/K)·Σ_k softmax(z_kn)_y), in log space: the target's log
            // probability under each draw, then log-mean-exp over the draws, so a
            // probability that underflows (large noise, confident logits) gives a large
            // finite loss instead of log 0.
            let lp = b.op_a("LogSoftmax", &[logits], vec![attr_int("axis", 1)]);
            let shape = b.op("Shape", &[logits]);
            let one = b.ints(&[1]);
            let c = b.op_a("Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
            let head = b.ints(&[k as i64, -1]);
            let s3 = b.op_a("Concat", &[&head, &c], vec![attr_int("axis", 0)]);
            let lp3 = b.op("Reshape", &[&lp, &s3]);
            let vals = b.constant::<f32>(&[2], &[0.0, 1.0]);
            let oh = b.op_a("OneHot", &[LABELS, &c, &vals], vec![attr_int("axis", -1)]);
            let pick = b.op("Mul", &[&lp3, &oh]);
            let two = b.ints(&[2]);
            let ly = b.op_a("ReduceSum", &[&pick, &two], vec![attr_int("keepdims", 0)]);
            let lse = crate::train::loss::reduce(&mut b, "ReduceLogSumExp", opset, &ly, &[0]);
            let m = crate::train::loss::reduce_mean(&mut b, opset, &lse, &[0]);
            let log_k = b.scalar_of(1, (k as f64).ln());
            let lm = b.op("Sub", &[&m, &log_k]);
            b.op("Neg", &[&lm])
        }
        LossKind::Mse => {
            let d = b.op("Sub", &[logits, LABELS]);
            let sq = b.op("Mul", &[&d, &d]);
            crate::train::loss::reduce_mean(&mut b, opset, &sq, &[0, 1])
        }
    };
    b.node_to("Identity", &[&loss_v], &[VAL_LOSS], vec![]);
    e.apply(b.finish())?;
    let (e, state) = finish_val(e, &reg, theta, opt)?;
    Ok(ValStep {
        graph: e,
        state,
        every,
        lr,
        batch,
    })
}

/// Names of the scalar inputs and outputs of `train_step.onnx`.
pub const LR: &str = "lr";
pub const STEP: &str = "step";
pub const LOSS: &str = "loss";
pub const CORRECT: &str = "correct";
pub const LABELS: &str = "labels";
pub const PER_SAMPLE: &str = "per_sample_loss";
/// Optional eval output: the inverse-rate regularizer's implicit per-sample weights.
pub const IR_WEIGHTS: &str = "inverse_rate.weights";

/// BatchNormalization nodes in training mode: (running mean, running var) initializer
/// names with the outputs that carry their updates.
fn bn_buffers(g: &Graph) -> Vec<(String, String)> {
    let mut out = vec![];
    for n in &g.nodes {
        if n.op_type() != "BatchNormalization" || n.output.len() < 3 {
            continue;
        }
        let training = n.attr_i("training_mode").unwrap_or(0) != 0 || g.opset() < 14;
        if !training {
            continue;
        }
        for k in [3usize, 4] {
            let (i, o) = (&n.input[k], &n.output[k - 2]);
            if !o.is_empty() && g.initializer(i).is_some() {
                out.push((i.clone(), o.clone()));
            }
        }
    }
    out
}

/// Turn initializers into graph inputs (same names); returns their tensors.
fn lift(g: &mut Graph, names: &[String]) -> Vec<TensorProto> {
    let set: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut lifted = vec![];
    let mut keep = vec![];
    for t in std::mem::take(&mut g.initializers) {
        if set.contains(t.name()) {
            lifted.push(t);
        } else {
            keep.push(t);
        }
    }
    g.initializers = keep;
    g.inputs.retain(|i| !set.contains(i.name()));
    for t in &lifted {
        let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d)).collect();
        g.inputs.push(value_info(t.name(), t.data_type(), &dims));
    }
    // Keep the order of `names`.
    names
        .iter()
        .map(|n| {
            lifted
                .iter()
                .find(|t| t.name() == n)
                .expect("lifted")
                .clone()
        })
        .collect()
}

/// Put BatchNormalization and Dropout in inference mode.
pub fn to_inference(g: &mut Graph) {
    for n in g.nodes.iter_mut() {
        match n.op_type() {
            "BatchNormalization" => {
                n.attribute.retain(|a| a.name() != "training_mode");
                n.output.truncate(1);
            }
            "Dropout" => {
                n.input.truncate(2);
                n.output.truncate(1);
            }
            _ => {}
        }
    }
}

fn data_input(g: &Graph) -> Result<(String, Vec<Dim>)> {
    let ins: Vec<_> = g.real_inputs().collect();
    match ins.as_slice() {
        [one] => Ok((
            one.name().to_string(),
            crate::proto::tensor_type(one)
                .and_then(|t| t.1)
                .unwrap_or_default(),
        )),
        _ => Err(Error::msg(format!(
            "regraft trains models with exactly one data input; this one has {}",
            ins.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Build both graphs and the state they share.
pub fn build(model: &ModelProto, recipe: &Recipe) -> Result<Artifacts> {
    recipe.validate()?;
    let opt = &recipe.optimizer;
    // ---- train_step.onnx
    let mut g = Graph::from_model(model.clone());
    // Parameters come from the model's own initializers, never from constants a rewrite adds.
    let original: HashSet<String> = g
        .initializers
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let (input, input_dims) = data_input(&g)?;
    let logits = find_logits(&g, recipe.logits.as_deref())?;
    let reg = cross_rewrite(&mut g, recipe, &logits, 0, None)?;
    let head = add_loss(&mut g, recipe.loss, &logits)?;
    if head.labels != LABELS || head.loss != LOSS {
        return Err(Error::msg(
            "the model already uses the names 'labels' or 'loss'; rename them before training",
        ));
    }
    let mut diag: Vec<(String, String)> = vec![];
    let mut reg = reg;
    if let Regularizer::InverseRate(ir) = &recipe.regularizer {
        // Validated λ: log λ is a regularization parameter, an input of the training step.
        let log_l = (ir.lambda_mode == LambdaMode::Validated).then(|| {
            let t = crate::proto::tensor::<f32>(LOG_LAMBDA, &[], &[ir.lambda.ln() as f32]);
            g.initializers.push(t);
            reg.push(LOG_LAMBDA.to_string());
            LOG_LAMBDA
        });
        let o =
            crate::regularizers::inverse_rate::rewrite(&mut g, ir, LOSS, &head.per_sample, log_l)?;
        diag = vec![
            ("inverse_rate.reg".into(), o.reg),
            ("inverse_rate.J".into(), o.j),
            ("inverse_rate.lambda".into(), o.lambda),
        ];
    }
    for f in &recipe.freeze {
        if !g.initializers.iter().any(|t| glob_match(f, t.name())) {
            return Err(Error::flag(
                "--freeze",
                format!("the pattern '{f}' matches no initializer"),
            ));
        }
    }
    let params: Vec<String> = trainable_initializers(&g, &[LOSS])
        .into_iter()
        .filter(|p| original.contains(p) && !recipe.freeze.iter().any(|f| glob_match(f, p)))
        .collect();
    if params.is_empty() {
        return Err(Error::msg(
            "the model has no trainable parameter on a path to the loss",
        ));
    }
    let buffers = bn_buffers(&g);
    let grads = differentiate(&mut g, LOSS, &params)?;
    let types = infer(&g);
    let classes = types
        .shape(&logits)
        .and_then(|s| s.get(1).copied().flatten());
    let ptensors = lift(&mut g, &params);
    let bnames: Vec<String> = buffers.iter().map(|(b, _)| b.clone()).collect();
    let btensors = lift(&mut g, &bnames);
    // Regularization parameters are plain inputs of the training step: no gradient, no update.
    lift(&mut g, &reg);
    let mut state = vec![];
    let mut b = Builder::new(&g, "optimizer");
    b.prefix = "optim/".into();
    b.patch
        .add_inputs
        .push(value_info(LR, DataType::Float as i32, &[]));
    b.patch
        .add_inputs
        .push(value_info(STEP, DataType::Float as i32, &[]));
    let grads = opt.clip(&mut b, &grads);
    let mut outputs = vec![value_info(LOSS, DataType::Float as i32, &[])];
    if recipe.loss == LossKind::CrossEntropy {
        let am = b.op_a(
            "ArgMax",
            &[&logits],
            vec![attr_int("axis", 1), attr_int("keepdims", 0)],
        );
        let eq = b.op("Equal", &[&am, LABELS]);
        let f = b.op_a("Cast", &[&eq], vec![attr_int("to", DataType::Float as i64)]);
        let s = b.op_a("ReduceSum", &[&f], vec![attr_int("keepdims", 0)]);
        b.node_to("Identity", &[&s], &[CORRECT], vec![]);
        outputs.push(value_info(CORRECT, DataType::Float as i32, &[]));
    }
    for (name, v) in &diag {
        b.node_to("Identity", &[v], &[name], vec![]);
        outputs.push(value_info(name, DataType::Float as i32, &[]));
    }
    for ((p, gname), t) in params.iter().zip(&grads).zip(&ptensors) {
        if t.data_type() != DataType::Float as i32 {
            return Err(Error::msg(format!(
                "parameter '{p}' is {}; regraft trains float32 parameters",
                crate::proto::dtype_name(t.data_type())
            )));
        }
        add_update(&mut b, opt, p, gname, t, LR, STEP, &mut outputs, &mut state);
    }
    for ((bn, out), t) in buffers.iter().zip(&btensors) {
        let o = b.fresh_exact(&format!("{bn}_new"));
        b.node_to("Identity", &[out], &[&o], vec![]);
        let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d)).collect();
        outputs.push(value_info(&o, t.data_type(), &dims));
        state.push(StateEntry {
            name: bn.clone(),
            output: o,
            kind: StateKind::Buffer,
            dims: t.dims.clone(),
            init: t.clone(),
        });
    }
    let patch = b.finish();
    g.apply(patch)?;
    g.outputs = outputs;
    g.remove_dead();
    g.check("train_step")?;

    // ---- val_step.onnx (cross-regularization)
    let theta: Vec<String> = state
        .iter()
        .filter(|s| s.kind != StateKind::Slot)
        .map(|s| s.name.clone())
        .collect();
    let rank = input_dims.len().max(1);
    let val = match &recipe.regularizer {
        _ if reg.is_empty() => None,
        Regularizer::InverseRate(ir) => Some(build_lambda_val(model, recipe, ir, &logits, &theta)?),
        _ => Some(build_val(model, recipe, &logits, &input, rank, &theta)?),
    };

    // ---- eval.onnx: same state inputs, inference mode, the deterministic predictive
    // (noise removed; the norm split applied with ρ as an input).
    let mut e = Graph::from_model(model.clone());
    to_inference(&mut e);
    let eval_reg = if matches!(recipe.regularizer, Regularizer::CrossNorm(_)) {
        cross_rewrite(&mut e, recipe, &logits, 2, None)?
    } else {
        vec![]
    };
    lift(&mut e, &eval_reg);
    let eh = add_loss(&mut e, recipe.loss, &logits)?;
    let names: Vec<String> = state
        .iter()
        .filter(|s| s.kind != StateKind::Slot)
        .map(|s| s.name.clone())
        .collect();
    lift(&mut e, &names);
    let mut b = Builder::new(&e, "eval");
    b.node_to("Identity", &[&eh.per_sample], &[PER_SAMPLE], vec![]);
    let mut eval_extra = vec![];
    if let Regularizer::InverseRate(ir) = &recipe.regularizer {
        // The implicit per-sample weights w_i = 1 − p_i^λ / mean(p^λ), p_i = e^{−ℓ_i}.
        let lam = b.scalar_of(DataType::Float as i32, ir.lambda);
        let neg = b.op("Neg", &[&eh.per_sample]);
        let z = b.op("Mul", &[&neg, &lam]);
        let pl = b.op("Exp", &[&z]);
        let m = crate::train::loss::reduce_mean(&mut b, e.opset(), &pl, &[0]);
        let q = b.op("Div", &[&pl, &m]);
        let one = b.scalar_of(DataType::Float as i32, 1.0);
        b.node_to("Sub", &[&one, &q], &[IR_WEIGHTS], vec![]);
        eval_extra.push(value_info(
            IR_WEIGHTS,
            DataType::Float as i32,
            &[Dim::Param("N".into())],
        ));
    }
    let patch = b.finish();
    e.apply(patch)?;
    let ldt = types.dtype(&logits).unwrap_or(DataType::Float as i32);
    let lshape: Vec<Dim> = types
        .shape(&logits)
        .map(|s| {
            s.iter()
                .enumerate()
                .map(|(i, d)| {
                    d.filter(|_| i > 0)
                        .map(Dim::Fixed)
                        .unwrap_or(Dim::Param("N".into()))
                })
                .collect()
        })
        .unwrap_or_default();
    e.outputs = vec![
        value_info(&logits, ldt, &lshape),
        value_info(
            PER_SAMPLE,
            DataType::Float as i32,
            &[Dim::Param("N".into())],
        ),
    ];
    e.outputs.extend(eval_extra);
    e.remove_dead();
    e.check("eval")?;
    let extras = diag.into_iter().map(|(n, _)| n).collect();
    Ok(Artifacts {
        train: g,
        eval: e,
        state,
        input,
        input_dims,
        logits,
        classes,
        extras,
        val,
    })
}
