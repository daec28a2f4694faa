//! Reverse-mode automatic differentiation to standard ONNX ops.
//!
//! [`differentiate`] walks the nodes on a differentiable path between the parameters
//! (`wrt`) and the loss in reverse topological order and asks each op's rule for the
//! gradients of its inputs. Design, after ONNX Runtime's gradient graph builder:
//! - one rule per op type, registered by name in [`registry`]; ops without a gradient are
//!   registered as such, and a missing rule fails naming the op, the node and the list;
//! - a rule reads its node through [`GradCtx`] (input i, output i, gradient of output i,
//!   whether input i needs a gradient) and returns new nodes as data through a
//!   [`Builder`];
//! - gradients are named `<value>_grad`; several contributions to one value are summed
//!   (`Sum`) in one place;
//! - broadcasting is undone in exactly one helper, [`GradCtx::unbroadcast`].

pub mod reach;
mod rules;
pub mod stop;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::ir::infer::{Types, infer};
use crate::ir::{Builder, Graph};
use crate::proto::{AttributeProto, DataType, NodeExt, NodeProto, attr_int, attr_tensor, fill};

/// A gradient rule: returns, for each input of the node, its gradient value (or `None`
/// when the input needs none).
pub type RuleFn = fn(&mut GradCtx) -> Result<Vec<Option<String>>>;

#[derive(Clone, Copy)]
pub enum Rule {
    /// The op's outputs carry no gradient (Shape, comparisons, random draws, ...).
    NoGradient,
    Grad(RuleFn),
}

pub struct Registry {
    rules: HashMap<&'static str, Rule>,
}

impl Registry {
    pub fn add(&mut self, op: &'static str, f: RuleFn) {
        self.rules.insert(op, Rule::Grad(f));
    }
    pub fn no_gradient(&mut self, op: &'static str) {
        self.rules.insert(op, Rule::NoGradient);
    }
    pub fn get(&self, op: &str) -> Option<Rule> {
        self.rules.get(op).copied()
    }
    /// Op types with a real gradient rule, sorted.
    pub fn supported(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .rules
            .iter()
            .filter(|(_, r)| matches!(r, Rule::Grad(_)))
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }
}

/// The gradient rules, built once.
pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let mut r = Registry {
            rules: HashMap::new(),
        };
        for op in stop::NON_DIFFERENTIABLE_OPS {
            r.no_gradient(op);
        }
        rules::register_all(&mut r);
        r
    })
}

/// Whether an op type has a gradient rule (or is known to need none).
pub fn has_rule(op: &str) -> bool {
    registry().get(op).is_some()
}

/// Op types on a differentiable path between an initializer and `targets` that have no
/// gradient rule.
pub fn ops_without_rule(g: &Graph, targets: &[&str]) -> Vec<String> {
    let back = reach::backward_reach(g, targets);
    let params: HashSet<String> = g
        .initializers
        .iter()
        .filter(|t| crate::proto::is_float(t.data_type()))
        .map(|t| t.name().to_string())
        .collect();
    let fwd = reach::forward_reach(g, &params);
    let mut out = BTreeSet::new();
    for n in &g.nodes {
        let on_path = n.output.iter().any(|o| back.contains(o) && fwd.contains(o));
        if on_path && !has_rule(n.op_type()) {
            out.insert(n.op_type().to_string());
        }
    }
    out.into_iter().collect()
}

/// What a rule sees of its node.
pub struct GradCtx<'a, 'g> {
    pub node: &'a NodeProto,
    pub b: &'a mut Builder<'g>,
    pub types: &'a Types,
    pub opset: i64,
    out_grads: Vec<Option<String>>,
    needs: Vec<bool>,
    shapes: &'a mut HashMap<String, String>,
}

impl GradCtx<'_, '_> {
    /// Name of input `i` ("" when absent).
    pub fn x(&self, i: usize) -> String {
        self.node.input.get(i).cloned().unwrap_or_default()
    }
    /// Whether input `i` is present.
    pub fn has_x(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|s| !s.is_empty())
    }
    /// Name of output `i`.
    pub fn y(&self, i: usize) -> String {
        self.node.output.get(i).cloned().unwrap_or_default()
    }
    /// Gradient of output `i`, if any consumer produced one.
    pub fn dy(&self, i: usize) -> Option<String> {
        self.out_grads.get(i).cloned().flatten()
    }
    /// Gradient of output 0, or zeros shaped like it.
    pub fn dy0(&mut self) -> String {
        match self.dy(0) {
            Some(g) => g,
            None => {
                let y = self.y(0);
                self.zeros_like(&y)
            }
        }
    }
    /// Whether input `i` needs a gradient.
    pub fn needs(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }
    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.node.attr_i(name).unwrap_or(default)
    }
    pub fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.node.attr_f(name).unwrap_or(default)
    }
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr_ints(name).filter(|v| !v.is_empty())
    }
    pub fn attr_s(&self, name: &str) -> Option<String> {
        self.node.attr_s(name)
    }
    /// An error naming this node.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::node(self.node.describe(), msg)
    }
    /// Element type of a value (float32 when unknown).
    pub fn dtype(&self, v: &str) -> i32 {
        self.types.dtype(v).unwrap_or(DataType::Float as i32)
    }
    /// Rank of a value, or an error naming the node when it cannot be inferred.
    pub fn rank(&self, v: &str) -> Result<usize> {
        self.types.rank(v).ok_or_else(|| {
            self.err(format!(
                "the rank of '{v}' is unknown; the gradient rule needs it"
            ))
        })
    }
    /// Statically known dims of a value.
    pub fn shape(&self, v: &str) -> Option<Vec<Option<i64>>> {
        self.types.shape(v).cloned()
    }
    /// An int64 constant's value (axes, shapes), if known statically.
    pub fn const_ints(&self, v: &str) -> Option<Vec<i64>> {
        self.types.consts.get(v).cloned()
    }

    // ---- building blocks --------------------------------------------------------------

    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.b.op(op, inputs)
    }
    pub fn op_a(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.b.op_a(op, inputs, attrs)
    }
    /// A scalar constant of the node's floating-point type (that of `like`).
    pub fn scalar(&mut self, like: &str, v: f64) -> String {
        let dt = self.dtype(like);
        self.b.scalar_of(dt, v)
    }
    /// 1-D int64 constant.
    pub fn ints(&mut self, v: &[i64]) -> String {
        self.b.ints(v)
    }
    /// `Shape(v)`, built once per value.
    pub fn shape_of(&mut self, v: &str) -> String {
        if let Some(s) = self.shapes.get(v) {
            return s.clone();
        }
        let s = match self.types.get(v).and_then(|t| t.static_shape()) {
            Some(dims) => self.b.ints(&dims),
            None => self.b.op("Shape", &[v]),
        };
        self.shapes.insert(v.to_string(), s.clone());
        s
    }
    /// Zeros with the shape and type of `v`.
    pub fn zeros_like(&mut self, v: &str) -> String {
        let dt = self.dtype(v);
        let s = self.shape_of(v);
        let z = zero_tensor(dt);
        self.b
            .op_a("ConstantOfShape", &[&s], vec![attr_tensor("value", z)])
    }
    /// `Reshape(x, Shape(like))`.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let s = self.shape_of(like);
        self.b.op("Reshape", &[x, &s])
    }
    /// `ReduceSum` over constant axes (opset-13 input form).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.ints(axes);
        self.op_a(
            "ReduceSum",
            &[x, &a],
            vec![attr_int("keepdims", keepdims as i64)],
        )
    }
    /// `Transpose` with a permutation.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op_a(
            "Transpose",
            &[x],
            vec![crate::proto::attr_ints("perm", perm)],
        )
    }

    /// Undo broadcasting: sum `grad` (shaped like output `out`) down to the shape of the
    /// input value `input`. The one place broadcast reduction happens.
    pub fn unbroadcast(&mut self, grad: &str, input: &str, out: &str) -> Result<String> {
        if let (Some(si), Some(so)) = (self.shape(input), self.shape(out))
            && si.len() <= so.len()
        {
            let lead = so.len() - si.len();
            let mut axes: Vec<i64> = (0..lead as i64).collect();
            let mut dynamic = false;
            for (k, d) in si.iter().enumerate() {
                match (*d, so[lead + k]) {
                    (_, Some(1)) => {}
                    (Some(1), _) => axes.push((lead + k) as i64),
                    (Some(_), _) => {}
                    // Symbolic on both sides (e.g. the batch): taken as the same dim.
                    (None, None) => {}
                    // Unknown input dim against a known output dim: it may be 1.
                    (None, Some(_)) => dynamic = true,
                }
            }
            if !dynamic {
                if axes.is_empty() {
                    return Ok(grad.to_string());
                }
                if axes.len() == lead {
                    return Ok(self.reduce_sum(grad, &axes, false));
                }
                let r = self.reduce_sum(grad, &axes, true);
                return Ok(if lead > 0 {
                    self.reshape_like(&r, input)
                } else {
                    r
                });
            }
        }
        Ok(self.unbroadcast_dynamic(grad, input))
    }

    /// Broadcast reduction decided at run time: axes where the (left-padded) input shape
    /// differs from the gradient's shape are summed, then the result is reshaped.
    fn unbroadcast_dynamic(&mut self, grad: &str, input: &str) -> String {
        let sg = self.op("Shape", &[grad]);
        let si = self.shape_of(input);
        let rg = self.op("Shape", &[&sg]);
        let ri = self.op("Shape", &[&si]);
        let pad = self.op("Sub", &[&rg, &ri]);
        let one = self.b.constant::<i64>(&[1], &[1]);
        let ones = self.op("Expand", &[&one, &pad]);
        let si_p = self.op_a("Concat", &[&ones, &si], vec![attr_int("axis", 0)]);
        let eq = self.op("Equal", &[&si_p, &sg]);
        let ne = self.op("Not", &[&eq]);
        let nz = self.op("NonZero", &[&ne]);
        let flat = self.ints(&[-1]);
        let axes = self.op("Reshape", &[&nz, &flat]);
        let r = self.op_a(
            "ReduceSum",
            &[grad, &axes],
            vec![attr_int("keepdims", 1), attr_int("noop_with_empty_axes", 1)],
        );
        self.b.op("Reshape", &[&r, &si])
    }
}

/// A floating-point constant's first value (initializer or `Constant` node), if known.
pub fn const_float(c: &GradCtx, v: &str) -> Option<f64> {
    c.types.fconsts.get(v).and_then(|x| x.first().copied())
}

/// Give Dropout (training mode) and MaxPool nodes the mask / indices outputs their
/// gradients need, where the export left them out.
fn add_saved_outputs(g: &mut Graph) {
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        let want = match n.op_type() {
            "Dropout" if n.input.len() > 2 && !n.input[2].is_empty() => true,
            "MaxPool" => true,
            _ => false,
        };
        if want && n.output.get(1).is_none_or(|o| o.is_empty()) {
            let base = format!("{}_saved", n.output[0]);
            let name = g.names.fresh(&base);
            let n = &mut g.nodes[i];
            if n.output.len() < 2 {
                n.output.push(name);
            } else {
                n.output[1] = name;
            }
        }
    }
}

fn zero_tensor(dt: i32) -> crate::proto::TensorProto {
    if dt == DataType::Double as i32 {
        fill::<f64>(0.0)
    } else {
        fill::<f32>(0.0)
    }
}

/// Build the gradients of the scalar `loss` with respect to each value in `wrt`
/// (initializers or graph inputs). Returns the gradient value names, `<w>_grad`, in the
/// order of `wrt`; the caller decides which to expose as outputs.
pub fn differentiate(g: &mut Graph, loss: &str, wrt: &[String]) -> Result<Vec<String>> {
    if g.opset() < 13 {
        return Err(Error::msg(format!(
            "the model imports opset {} of the default domain; regraft differentiates opset 13 and later",
            g.opset()
        )));
    }
    add_saved_outputs(g);
    let types = infer(g);
    let sources: HashSet<String> = wrt.iter().cloned().collect();
    let fwd = reach::forward_reach(g, &sources);
    let back = reach::backward_reach(g, &[loss]);
    // The names users see are reserved first, so nothing else takes them.
    let grad_names: Vec<String> = wrt
        .iter()
        .map(|w| g.names.fresh(&format!("{w}_grad")))
        .collect();
    let reg = registry();
    let mut b = Builder::new(g, "autodiff");
    let mut acc: HashMap<String, Vec<String>> = HashMap::new();
    let mut shapes: HashMap<String, String> = HashMap::new();
    let ldt = types.dtype(loss).unwrap_or(DataType::Float as i32);
    let seed = match types.rank(loss) {
        Some(0) => b.scalar_of(ldt, 1.0),
        _ => {
            let one = b.scalar_of(ldt, 1.0);
            let s = b.op("Shape", &[loss]);
            b.op("Expand", &[&one, &s])
        }
    };
    acc.insert(loss.to_string(), vec![seed]);
    for n in g.nodes.iter().rev() {
        let active = n
            .output
            .iter()
            .enumerate()
            .any(|(i, o)| !stop::is_stop_output(n, i) && acc.contains_key(o));
        if !active {
            continue;
        }
        let needs: Vec<bool> = n
            .input
            .iter()
            .enumerate()
            .map(|(s, v)| {
                !v.is_empty() && !stop::is_stop_input(n, s) && fwd.contains(v) && back.contains(v)
            })
            .collect();
        if !needs.iter().any(|&x| x) {
            continue;
        }
        let rule = match reg.get(n.op_type()) {
            Some(Rule::Grad(f)) => f,
            Some(Rule::NoGradient) => continue,
            None => {
                return Err(Error::node(
                    n.describe(),
                    format!(
                        "no gradient rule for op '{}'; supported: {}",
                        n.op_type(),
                        reg.supported().join(", ")
                    ),
                ));
            }
        };
        let out_grads: Vec<Option<String>> = n
            .output
            .iter()
            .enumerate()
            .map(|(i, o)| {
                if stop::is_stop_output(n, i) {
                    return None;
                }
                acc.remove(o).map(|c| accumulate(&mut b, o, c, None))
            })
            .collect();
        let tag = if n.name().is_empty() {
            n.output[0].clone()
        } else {
            n.name().to_string()
        };
        b.prefix = format!("{tag}_grad/");
        let mut ctx = GradCtx {
            node: n,
            b: &mut b,
            types: &types,
            opset: g.opset(),
            out_grads,
            needs: needs.clone(),
            shapes: &mut shapes,
        };
        let in_grads = rule(&mut ctx)?;
        b.prefix.clear();
        for (j, gj) in in_grads.into_iter().enumerate() {
            if let Some(gj) = gj
                && needs.get(j).copied().unwrap_or(false)
            {
                acc.entry(n.input[j].clone()).or_default().push(gj);
            }
        }
    }
    for (w, name) in wrt.iter().zip(&grad_names) {
        match acc.remove(w) {
            Some(c) => {
                accumulate(&mut b, w, c, Some(name));
            }
            None => {
                // No path from this parameter to the loss: its gradient is zero.
                let dt = types.dtype(w).unwrap_or(DataType::Float as i32);
                let s = match types.get(w).and_then(|t| t.static_shape()) {
                    Some(d) => b.ints(&d),
                    None => b.op("Shape", &[w]),
                };
                b.node_to(
                    "ConstantOfShape",
                    &[&s],
                    &[name],
                    vec![attr_tensor("value", zero_tensor(dt))],
                );
            }
        }
    }
    let patch = b.finish();
    g.apply(patch)?;
    Ok(grad_names)
}

/// Sum the gradient contributions of one value; with `name`, the result gets that name.
fn accumulate(b: &mut Builder, v: &str, mut contribs: Vec<String>, name: Option<&str>) -> String {
    if contribs.len() == 1 && name.is_none() {
        return contribs.pop().expect("one contribution");
    }
    let out = match name {
        Some(n) => n.to_string(),
        None => b.fresh_exact(&format!("{v}_grad")),
    };
    if contribs.len() == 1 {
        // A contribution may be shared (a rule can pass its output gradient through
        // unchanged to several inputs), so it is never renamed in place.
        b.node_to("Identity", &[&contribs[0]], &[&out], vec![]);
        return out;
    }
    let refs: Vec<&str> = contribs.iter().map(String::as_str).collect();
    b.node_to("Sum", &refs, &[&out], vec![]);
    out
}
