//! Finite-difference gradient checks of single ONNX ops through ONNX Runtime.
//!
//! A [`Case`] is one node: an op type, attributes, an opset and its inputs, each a
//! differentiable float array (a graph input), a constant tensor (an initializer: axes,
//! shapes, indices, masks) or absent. [`Case::run`]:
//! 1. builds the one-node model and runs it once in ORT to learn its outputs' shapes and
//!    types;
//! 2. builds `loss = Σ_j ReduceSum(f64(y_j) · R_j)` over the float outputs (or the ones
//!    the case names) with fixed random `R_j` initializers;
//! 3. differentiates it with `regraft::autodiff::differentiate` w.r.t. the differentiable
//!    inputs and runs the gradient model once;
//! 4. compares each gradient with central finite differences of the loss model on up to
//!    [`Case::samples`] randomly chosen elements per input.
//!
//! A [`Suite`] runs several cases, saves every gradient model and runs the `onnx`
//! checker's full check on all of them in one call; it also asserts that no gradient
//! model uses a `com.microsoft` op. Failures are collected and reported together.
//!
//! Everything is seeded: the same case gives the same numbers on every run.

#![allow(dead_code)] // each test crate uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use regraft::ir::Graph;
use regraft::proto::{
    AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, ValueInfoProto, attr_int, make_node, tensor, value_info,
};
use regraft::runtime::{SessionOptions, session};

// ---------------------------------------------------------------------------------------
// Inputs

/// A differentiable value: the element type decides the op's kernel.
#[derive(Clone, Debug)]
pub enum Val {
    F64(ArrayD<f64>),
    F32(ArrayD<f32>),
}

impl Val {
    pub fn shape(&self) -> &[usize] {
        match self {
            Val::F64(a) => a.shape(),
            Val::F32(a) => a.shape(),
        }
    }
    fn len(&self) -> usize {
        self.shape().iter().product()
    }
    fn dtype(&self) -> i32 {
        match self {
            Val::F64(_) => DataType::Double as i32,
            Val::F32(_) => DataType::Float as i32,
        }
    }
    fn get(&self, i: usize) -> f64 {
        match self {
            Val::F64(a) => a.as_slice().expect("standard layout")[i],
            Val::F32(a) => a.as_slice().expect("standard layout")[i] as f64,
        }
    }
    /// A copy with element `i` moved by `d`; returns it and the step actually taken
    /// (after rounding to the element type).
    fn nudged(&self, i: usize, d: f64) -> (Val, f64) {
        match self {
            Val::F64(a) => {
                let mut b = a.clone();
                let s = b.as_slice_mut().expect("standard layout");
                let before = s[i];
                s[i] += d;
                let step = s[i] - before;
                (Val::F64(b), step)
            }
            Val::F32(a) => {
                let mut b = a.clone();
                let s = b.as_slice_mut().expect("standard layout");
                let before = s[i];
                s[i] = (s[i] as f64 + d) as f32;
                let step = s[i] as f64 - before as f64;
                (Val::F32(b), step)
            }
        }
    }
    fn to_value(&self) -> DynValue {
        match self {
            Val::F64(a) => Tensor::from_array(a.clone())
                .expect("f64 tensor")
                .into_dyn(),
            Val::F32(a) => Tensor::from_array(a.clone())
                .expect("f32 tensor")
                .into_dyn(),
        }
    }
}

/// One input of the node under test.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a handful per case
pub enum Input {
    /// Differentiable: a graph input, checked against finite differences.
    Diff(Val),
    /// A constant initializer (its name is replaced by the harness).
    Const(TensorProto),
    /// An omitted optional input ("").
    Absent,
    /// A value made by the case's `pre` nodes.
    Named(String),
}

/// A seeded source of test arrays.
pub struct Gen(StdRng);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(StdRng::seed_from_u64(seed))
    }
    fn uniform(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.0.random_range(lo..hi)).collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape")
    }
    /// Uniform in [-1, 1).
    pub fn a64(&mut self, shape: &[usize]) -> ArrayD<f64> {
        self.uniform(shape, -1.0, 1.0)
    }
    /// Uniform in [lo, hi).
    pub fn range64(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        self.uniform(shape, lo, hi)
    }
    /// Magnitude in [margin, 1), random sign: away from kinks at 0.
    pub fn away64(&mut self, shape: &[usize], margin: f64) -> ArrayD<f64> {
        let m = self.uniform(shape, margin, 1.0);
        m.mapv(|v| if self.0.random_bool(0.5) { v } else { -v })
    }
    /// Distinct values −1 + 2k/n in random order (no ties: max/arg-max are stable).
    pub fn distinct64(&mut self, shape: &[usize]) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        let mut v: Vec<f64> = (0..n)
            .map(|k| -1.0 + 2.0 * (k as f64 + 0.5) / n as f64)
            .collect();
        v.shuffle(&mut self.0);
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape")
    }
    /// A differentiable f64 input, uniform in [-1, 1).
    pub fn f64(&mut self, shape: &[usize]) -> Input {
        Input::Diff(Val::F64(self.a64(shape)))
    }
    /// A differentiable f32 input, uniform in [-1, 1).
    pub fn f32(&mut self, shape: &[usize]) -> Input {
        Input::Diff(Val::F32(self.a64(shape).mapv(|v| v as f32)))
    }
    /// A differentiable f64 input in [lo, hi).
    pub fn f64_in(&mut self, shape: &[usize], lo: f64, hi: f64) -> Input {
        Input::Diff(Val::F64(self.range64(shape, lo, hi)))
    }
    /// A differentiable f32 input in [lo, hi).
    pub fn f32_in(&mut self, shape: &[usize], lo: f64, hi: f64) -> Input {
        Input::Diff(Val::F32(self.range64(shape, lo, hi).mapv(|v| v as f32)))
    }
    /// A differentiable f64 input away from 0 (|x| ≥ margin).
    pub fn f64_away(&mut self, shape: &[usize], margin: f64) -> Input {
        Input::Diff(Val::F64(self.away64(shape, margin)))
    }
    /// A differentiable f32 input away from 0 (|x| ≥ margin).
    pub fn f32_away(&mut self, shape: &[usize], margin: f64) -> Input {
        Input::Diff(Val::F32(self.away64(shape, margin).mapv(|v| v as f32)))
    }
    /// A differentiable f64 input of distinct values.
    pub fn f64_distinct(&mut self, shape: &[usize]) -> Input {
        Input::Diff(Val::F64(self.distinct64(shape)))
    }
    /// A differentiable f32 input of distinct values.
    pub fn f32_distinct(&mut self, shape: &[usize]) -> Input {
        Input::Diff(Val::F32(self.distinct64(shape).mapv(|v| v as f32)))
    }
    /// Random integers in [lo, hi) with the given shape (as an int64 constant).
    pub fn ints(&mut self, shape: &[usize], lo: i64, hi: i64) -> Vec<i64> {
        let n: usize = shape.iter().product();
        (0..n).map(|_| self.0.random_range(lo..hi)).collect()
    }
    /// Random booleans with probability `p` of true.
    pub fn bools(&mut self, n: usize, p: f64) -> Vec<bool> {
        (0..n).map(|_| self.0.random_bool(p)).collect()
    }
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.0
    }
}

/// A constant int64 1-D input (axes, shapes, starts, ...).
pub fn ints(v: &[i64]) -> Input {
    Input::Const(tensor::<i64>("", &[v.len() as i64], v))
}

/// A constant int64 input of any shape (indices).
pub fn ints_nd(dims: &[i64], v: &[i64]) -> Input {
    Input::Const(tensor::<i64>("", dims, v))
}

/// A constant tensor input.
pub fn konst(t: TensorProto) -> Input {
    Input::Const(t)
}

/// A constant f64 input from an array.
pub fn const64(a: &ArrayD<f64>) -> Input {
    Input::Const(regraft::proto::from_array("", a))
}

/// A constant f32 input from an array.
pub fn const32(a: &ArrayD<f64>) -> Input {
    Input::Const(regraft::proto::from_array("", &a.mapv(|v| v as f32)))
}

// ---------------------------------------------------------------------------------------
// Cases

/// How a case declares its differentiable inputs' dims (the values fed are the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dims {
    /// Every dim known.
    Static,
    /// The first dim of each input symbolic (as a batch is), the rest known.
    Batch,
    /// Every dim symbolic, each with its own name, except dims of size 1, which stay
    /// static as exporters write broadcast dims. (regraft takes two symbolic dims met in
    /// broadcasting to be the same dim, as a batch dim is; a symbolic dim that is 1 at run
    /// time and broadcast would get an unreduced gradient.)
    Symbolic,
}

/// One op to check.
#[derive(Clone, Debug)]
pub struct Case {
    pub label: String,
    pub op: String,
    pub attrs: Vec<AttributeProto>,
    pub opset: i64,
    pub inputs: Vec<Input>,
    /// Outputs the node declares (the harness names them `y0`, `y1`, ...).
    pub outputs: usize,
    /// The outputs the loss reads (default: every floating-point output).
    pub loss_outputs: Option<Vec<usize>>,
    /// Finite-difference step (default 1e-6 in f64, 1e-2 in f32).
    pub eps: Option<f64>,
    /// |g − fd| ≤ atol + rtol·|fd| (defaults 1e-6/1e-5 in f64, 5e-4/2e-3 in f32).
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    /// Elements per input checked against finite differences.
    pub samples: usize,
    pub seed: u64,
    /// How the differentiable inputs' shapes are declared to regraft.
    pub dims: Dims,
    /// Nodes run before the one under test (they may read `x<i>` and make `Named`
    /// inputs), with their initializers.
    pub pre: Vec<NodeProto>,
    pub pre_inits: Vec<TensorProto>,
}

/// A case for `op` at `opset` with a label for messages.
pub fn case(label: &str, op: &str, opset: i64) -> Case {
    Case {
        label: label.to_string(),
        op: op.to_string(),
        attrs: vec![],
        opset,
        inputs: vec![],
        outputs: 1,
        loss_outputs: None,
        eps: None,
        atol: None,
        rtol: None,
        samples: 40,
        seed: 0x5eed,
        dims: Dims::Static,
        pre: vec![],
        pre_inits: vec![],
    }
}

impl Case {
    pub fn attr(mut self, a: AttributeProto) -> Case {
        self.attrs.push(a);
        self
    }
    pub fn input(mut self, i: Input) -> Case {
        self.inputs.push(i);
        self
    }
    pub fn inputs(mut self, v: impl IntoIterator<Item = Input>) -> Case {
        self.inputs.extend(v);
        self
    }
    pub fn outputs(mut self, n: usize) -> Case {
        self.outputs = n;
        self
    }
    pub fn loss_on(mut self, outs: &[usize]) -> Case {
        self.loss_outputs = Some(outs.to_vec());
        self
    }
    /// The same case with its inputs' dims declared as `d` (label suffixed).
    pub fn dims(mut self, d: Dims) -> Case {
        if d != Dims::Static {
            self.label = format!("{}_{d:?}", self.label);
        }
        self.dims = d;
        self
    }
    pub fn eps(mut self, e: f64) -> Case {
        self.eps = Some(e);
        self
    }
    /// Nodes (and their initializers) to run before the node under test.
    pub fn pre(mut self, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Case {
        self.pre.extend(nodes);
        self.pre_inits.extend(inits);
        self
    }
    pub fn tol(mut self, atol: f64, rtol: f64) -> Case {
        self.atol = Some(atol);
        self.rtol = Some(rtol);
        self
    }

    fn in_name(&self, i: usize) -> String {
        match &self.inputs[i] {
            Input::Diff(_) => format!("x{i}"),
            Input::Const(_) => format!("c{i}"),
            Input::Absent => String::new(),
            Input::Named(n) => n.clone(),
        }
    }

    fn diff_inputs(&self) -> Vec<(String, &Val)> {
        self.inputs
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                Input::Diff(v) => Some((self.in_name(i), v)),
                _ => None,
            })
            .collect()
    }

    fn all_f32(&self) -> bool {
        self.diff_inputs()
            .iter()
            .all(|(_, v)| matches!(v, Val::F32(_)))
    }

    /// The node under test, its graph inputs and its initializers.
    fn node_parts(&self) -> (NodeProto, Vec<ValueInfoProto>, Vec<TensorProto>) {
        let names: Vec<String> = (0..self.inputs.len()).map(|i| self.in_name(i)).collect();
        let outs: Vec<String> = (0..self.outputs).map(|i| format!("y{i}")).collect();
        let in_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let node = make_node(&self.op, "node", &in_refs, &out_refs, self.attrs.clone());
        let mut gin = Vec::new();
        let mut inits = Vec::new();
        for (i, x) in self.inputs.iter().enumerate() {
            match x {
                Input::Diff(v) => {
                    let dims: Vec<Dim> = v
                        .shape()
                        .iter()
                        .enumerate()
                        .map(|(k, &d)| match self.dims {
                            Dims::Symbolic if d != 1 => Dim::Param(format!("{}_d{k}", names[i])),
                            Dims::Batch if k == 0 => Dim::Param(format!("{}_batch", names[i])),
                            _ => Dim::Fixed(d as i64),
                        })
                        .collect();
                    gin.push(value_info(&names[i], v.dtype(), &dims));
                }
                Input::Const(t) => {
                    let mut t = t.clone();
                    t.name = Some(names[i].clone());
                    inits.push(t);
                }
                Input::Absent | Input::Named(_) => {}
            }
        }
        inits.extend(self.pre_inits.iter().cloned());
        (node, gin, inits)
    }

    fn feeds(&self, over: Option<(&str, &Val)>) -> Vec<(String, DynValue)> {
        self.diff_inputs()
            .into_iter()
            .map(|(n, v)| {
                let v = match over {
                    Some((m, w)) if m == n => w.to_value(),
                    _ => v.to_value(),
                };
                (n, v)
            })
            .collect()
    }

    /// The one-node model, every output a graph output (types left to ORT).
    pub fn forward_model(&self) -> ModelProto {
        let (node, gin, inits) = self.node_parts();
        let mut nodes = self.pre.clone();
        nodes.push(node.clone());
        let outputs = node
            .output
            .iter()
            .map(|o| ValueInfoProto {
                name: Some(o.clone()),
                ..Default::default()
            })
            .collect();
        model(self.opset, nodes, gin, inits, outputs)
    }

    /// Run the one-node model once: each output's (element type, shape).
    pub fn probe(&self) -> Result<Vec<(TensorElementType, Vec<usize>)>, String> {
        let bytes = self.forward_model().encode_to_vec();
        let mut s =
            new_session(&bytes).map_err(|e| format!("the forward model does not load: {e}"))?;
        let outs = s
            .run(self.feeds(None))
            .map_err(|e| format!("the forward model does not run: {e}"))?;
        (0..self.outputs)
            .map(|i| {
                let v = &outs[format!("y{i}").as_str()];
                match v.dtype() {
                    ValueType::Tensor { ty, shape, .. } => {
                        Ok((*ty, shape.iter().map(|&d| d as usize).collect()))
                    }
                    other => Err(format!("output y{i} is not a tensor: {other:?}")),
                }
            })
            .collect()
    }

    /// The loss model: the node, then Σ_j ReduceSum(f64(y_j)·R_j) as `loss`.
    pub fn loss_model(
        &self,
        probe: &[(TensorElementType, Vec<usize>)],
    ) -> Result<ModelProto, String> {
        let (node, gin, mut inits) = self.node_parts();
        let mut nodes = self.pre.clone();
        nodes.push(node);
        let float = |t: &TensorElementType| {
            matches!(t, TensorElementType::Float32 | TensorElementType::Float64)
        };
        let used: Vec<usize> = match &self.loss_outputs {
            Some(v) => v.clone(),
            None => (0..probe.len()).filter(|&j| float(&probe[j].0)).collect(),
        };
        if used.is_empty() {
            return Err("the node has no floating-point output for the loss".into());
        }
        let mut g = Gen::new(self.seed ^ 0xa5a5);
        let mut parts = Vec::new();
        for &j in &used {
            let (ty, shape) = &probe[j];
            if !float(ty) {
                return Err(format!("output y{j} is {ty:?}, not a floating-point value"));
            }
            let y = format!("y{j}");
            let y64 = if *ty == TensorElementType::Float32 {
                let c = format!("y{j}_f64");
                nodes.push(make_node(
                    "Cast",
                    &format!("cast{j}"),
                    &[&y],
                    &[&c],
                    vec![attr_int("to", DataType::Double as i64)],
                ));
                c
            } else {
                y
            };
            let r = format!("r{j}");
            inits.push(regraft::proto::from_array(&r, &g.a64(shape)));
            let p = format!("p{j}");
            nodes.push(make_node(
                "Mul",
                &format!("mul{j}"),
                &[&y64, &r],
                &[&p],
                vec![],
            ));
            let s = format!("s{j}");
            nodes.push(make_node(
                "ReduceSum",
                &format!("sum{j}"),
                &[&p],
                &[&s],
                vec![attr_int("keepdims", 0)],
            ));
            parts.push(s);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let op = if refs.len() == 1 { "Identity" } else { "Sum" };
        nodes.push(make_node(op, "loss_node", &refs, &["loss"], vec![]));
        let out = vec![value_info("loss", DataType::Double as i32, &[])];
        Ok(model(self.opset, nodes, gin, inits, out))
    }

    /// The gradient model: outputs `loss` and the gradient of every differentiable input
    /// (in input order), plus `extra` values of the differentiated graph.
    pub fn grad_model(
        &self,
        loss: &ModelProto,
        extra: &[&str],
    ) -> Result<(ModelProto, Vec<String>), String> {
        let mut g = Graph::from_model(loss.clone());
        let wrt: Vec<String> = self.diff_inputs().into_iter().map(|(n, _)| n).collect();
        let grads = regraft::autodiff::differentiate(&mut g, "loss", &wrt)
            .map_err(|e| format!("differentiate: {e}"))?;
        let mut outputs = vec![value_info("loss", DataType::Double as i32, &[])];
        for ((_, v), gname) in self.diff_inputs().iter().zip(&grads) {
            let dims: Vec<Dim> = v.shape().iter().map(|&d| Dim::Fixed(d as i64)).collect();
            outputs.push(value_info(gname, v.dtype(), &dims));
        }
        let types = regraft::ir::infer::infer(&g);
        for e in extra {
            let t = types
                .get(e)
                .ok_or_else(|| format!("no type is inferred for '{e}'"))?;
            let dims: Vec<Dim> = match &t.shape {
                Some(s) => s
                    .iter()
                    .map(|d| d.map_or(Dim::Param(String::new()), Dim::Fixed))
                    .collect(),
                None => vec![],
            };
            outputs.push(value_info(e, t.dtype, &dims));
        }
        g.outputs = outputs;
        g.remove_dead();
        g.check("gradcheck").map_err(|e| e.to_string())?;
        Ok((g.to_model(), grads))
    }

    fn tolerances(&self) -> (f64, f64, f64) {
        let f32 = self.all_f32()
            || self
                .diff_inputs()
                .iter()
                .any(|(_, v)| matches!(v, Val::F32(_)));
        let (eps, atol, rtol) = if f32 {
            (1e-2, 5e-4, 2e-3)
        } else {
            (1e-6, 1e-6, 1e-5)
        };
        (
            self.eps.unwrap_or(eps),
            self.atol.unwrap_or(atol),
            self.rtol.unwrap_or(rtol),
        )
    }

    /// Check the case; returns the gradient model on success.
    pub fn run(&self) -> Result<ModelProto, String> {
        let probe = self.probe()?;
        let loss = self.loss_model(&probe)?;
        let (gm, grads) = self.grad_model(&loss, &[])?;
        let mut ls = new_session(&loss.encode_to_vec())
            .map_err(|e| format!("the loss model does not load: {e}"))?;
        let mut gs = new_session(&gm.encode_to_vec())
            .map_err(|e| format!("the gradient model does not load: {e}"))?;
        let got = run_outputs(&mut gs, self.feeds(None))
            .map_err(|e| format!("the gradient model does not run: {e}"))?;
        let l0 = run_loss(&mut ls, self.feeds(None))?;
        let lg = got["loss"].first().copied().unwrap_or(f64::NAN);
        if (lg - l0).abs() > 1e-9 * (1.0 + l0.abs()) {
            return Err(format!(
                "the gradient model's loss {lg} differs from the loss model's {l0}"
            ));
        }
        let (eps, atol, rtol) = self.tolerances();
        let mut rng = Gen::new(self.seed);
        let mut bad = Vec::new();
        let mut checked = 0;
        for ((name, v), gname) in self.diff_inputs().into_iter().zip(&grads) {
            let g = &got[gname.as_str()];
            if g.shape() != v.shape() {
                return Err(format!(
                    "the gradient of {name} has shape {:?}, the input {:?}",
                    g.shape(),
                    v.shape()
                ));
            }
            let gflat: Vec<f64> = g.iter().copied().collect();
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.shuffle(rng.rng());
            idx.truncate(self.samples);
            idx.sort_unstable();
            for i in idx {
                let (vp, hp) = v.nudged(i, eps);
                let (vm, hm) = v.nudged(i, -eps);
                let lp = run_loss(&mut ls, self.feeds(Some((&name, &vp))))?;
                let lm = run_loss(&mut ls, self.feeds(Some((&name, &vm))))?;
                let fd = (lp - lm) / (hp - hm);
                let gi = gflat[i];
                checked += 1;
                // Written so that a NaN fails.
                let close = (gi - fd).abs() <= atol + rtol * fd.abs();
                if !close {
                    bad.push(format!(
                        "  d loss/d {name}[{}] (x = {:.6}): regraft {gi:.9}, finite differences {fd:.9}",
                        unravel(i, v.shape()),
                        v.get(i)
                    ));
                }
            }
        }
        if checked == 0 {
            return Err("no element was checked (no differentiable input?)".into());
        }
        if !bad.is_empty() {
            let n = bad.len();
            bad.truncate(8);
            return Err(format!(
                "{n} of {checked} gradient elements differ from finite differences (eps {eps:e}, tolerance {atol:e} + {rtol:e}·|fd|):\n{}",
                bad.join("\n")
            ));
        }
        Ok(gm)
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> String {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = i % d.max(1);
        i /= d.max(1);
    }
    idx.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// Models and sessions

/// A model around one graph, default domain at `opset`, IR 10.
pub fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    outputs: Vec<ValueInfoProto>,
) -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        producer_name: Some("regraft-gradcheck".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("gradcheck".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A single-threaded CPU session without graph optimizations (tests run in parallel,
/// and the graph should run as written).
pub fn new_session(bytes: &[u8]) -> Result<Session, String> {
    let opts = SessionOptions {
        threads: 1,
        optimize: false,
        ..Default::default()
    };
    session(bytes, &opts).map_err(|e| e.to_string())
}

/// Every floating-point output of a run, as f64 arrays.
pub fn run_outputs(
    s: &mut Session,
    feeds: Vec<(String, DynValue)>,
) -> Result<HashMap<String, ArrayD<f64>>, String> {
    let outs = s.run(feeds).map_err(|e| e.to_string())?;
    let mut m = HashMap::new();
    for (name, v) in outs.iter() {
        let a = if let Ok(a) = v.try_extract_array::<f64>() {
            a.to_owned()
        } else if let Ok(a) = v.try_extract_array::<f32>() {
            a.mapv(|x| x as f64)
        } else if let Ok(a) = v.try_extract_array::<bool>() {
            a.mapv(|x| x as u8 as f64)
        } else if let Ok(a) = v.try_extract_array::<i64>() {
            a.mapv(|x| x as f64)
        } else {
            return Err(format!(
                "output {name} has an unexpected type {:?}",
                v.dtype()
            ));
        };
        m.insert(name.to_string(), a);
    }
    Ok(m)
}

fn run_loss(s: &mut Session, feeds: Vec<(String, DynValue)>) -> Result<f64, String> {
    let outs = s
        .run(feeds)
        .map_err(|e| format!("the loss model does not run: {e}"))?;
    let a = outs["loss"]
        .try_extract_array::<f64>()
        .map_err(|e| e.to_string())?;
    Ok(a.iter().copied().next().unwrap_or(f64::NAN))
}

/// Nodes of a model in a Microsoft domain (there must be none).
pub fn microsoft_ops(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().expect("a graph");
    let mut v: Vec<String> = g
        .node
        .iter()
        .filter(|n| n.domain().starts_with("com.microsoft"))
        .map(|n| format!("{}::{}", n.domain(), n.op_type()))
        .collect();
    v.extend(
        m.opset_import
            .iter()
            .filter(|o| o.domain().starts_with("com.microsoft"))
            .map(|o| format!("opset import {}", o.domain())),
    );
    v
}

/// Run the `onnx` checker's full check on `files` in one call; the failures, one a line.
pub fn checker_failures(files: &[PathBuf]) -> Option<String> {
    if files.is_empty() {
        return None;
    }
    let out = crate::common::onnx_view_cmd(&[std::ffi::OsStr::new("check")])
        .args(files)
        .output()
        .expect("run tools/onnx_view.py");
    if out.status.success() {
        None
    } else {
        Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Save a model to `dir/<label>.onnx` (label made file-safe); returns the path.
pub fn save(dir: &Path, label: &str, m: &ModelProto) -> PathBuf {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let p = dir.join(format!("{safe}.onnx"));
    std::fs::write(&p, m.encode_to_vec()).expect("write a gradient model");
    p
}

// ---------------------------------------------------------------------------------------
// Suites

/// Cases checked together: every failure is reported, and every gradient model goes
/// through the onnx checker (one call for the suite).
pub struct Suite {
    name: String,
    cases: Vec<Case>,
}

impl Suite {
    pub fn new(name: &str) -> Suite {
        Suite {
            name: name.to_string(),
            cases: vec![],
        }
    }
    pub fn add(&mut self, c: Case) -> &mut Suite {
        self.cases.push(c);
        self
    }
    /// Run every case, then the checker on every gradient model; panic listing failures.
    pub fn run(&self) {
        assert!(!self.cases.is_empty(), "suite {} has no cases", self.name);
        let dir = crate::common::tempdir();
        let mut failures = Vec::new();
        let mut files = Vec::new();
        for c in &self.cases {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.run()))
                .unwrap_or_else(|e| Err(format!("panicked: {}", panic_msg(&e))));
            match r {
                Ok(gm) => {
                    let ms = microsoft_ops(&gm);
                    if !ms.is_empty() {
                        failures.push(format!(
                            "[{}] the gradient model uses {}",
                            c.label,
                            ms.join(", ")
                        ));
                    }
                    files.push(save(dir.path(), &c.label, &gm));
                }
                Err(e) => failures.push(format!("[{}] {e}", c.label)),
            }
        }
        if let Some(e) = checker_failures(&files) {
            failures.push(format!("onnx checker (full check):\n{e}"));
        }
        assert!(
            failures.is_empty(),
            "{}: {} of {} cases failed:\n{}",
            self.name,
            failures.len(),
            self.cases.len(),
            failures.join("\n\n")
        );
    }
}

pub fn panic_msg(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
