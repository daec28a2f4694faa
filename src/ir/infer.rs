//! Element type and shape inference, as far as the gradient rules need it: every value's
//! dtype, its rank, and the dims that are known statically (`None` = symbolic/unknown).
//!
//! It covers the ops regraft differentiates; for anything else it falls back on the
//! model's declared `value_info` (PyTorch's exporters write it). Dims that can only be
//! known at run time are left `None`, and the rules then use `Shape` ops.

use super::{Graph, NameMap};
use crate::proto::{DataType, Dim, NodeExt, NodeProto, TensorProto, tensor_type, tensor_values};

/// A value's element type and (possibly partial) shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeInfo {
    pub dtype: i32,
    /// `None`: unknown rank. A `None` dim is unknown or symbolic.
    pub shape: Option<Vec<Option<i64>>>,
}

impl TypeInfo {
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }
    /// All dims, if every one of them is known.
    pub fn static_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().copied().collect()
    }
}

/// Inferred types of a graph's values, plus the values of small integer constants.
#[derive(Default, Debug)]
pub struct Types {
    pub values: NameMap<String, TypeInfo>,
    /// Int64 constants (initializers, `Constant` nodes, shapes folded statically).
    pub consts: NameMap<String, Vec<i64>>,
    /// Partially known small int64 values (shape arithmetic): `None` elements are only
    /// known at run time. Fully known ones are also in `consts`.
    pub partial: NameMap<String, Vec<Option<i64>>>,
    /// Small floating-point constants (scalars such as a Dropout ratio), as f64.
    pub fconsts: NameMap<String, Vec<f64>>,
}

impl Types {
    pub fn get(&self, v: &str) -> Option<&TypeInfo> {
        self.values.get(v)
    }
    pub fn dtype(&self, v: &str) -> Option<i32> {
        self.values.get(v).map(|t| t.dtype)
    }
    pub fn rank(&self, v: &str) -> Option<usize> {
        self.values.get(v).and_then(TypeInfo::rank)
    }
    pub fn shape(&self, v: &str) -> Option<&Vec<Option<i64>>> {
        self.values.get(v).and_then(|t| t.shape.as_ref())
    }
}

fn from_declared(vi: &crate::proto::ValueInfoProto) -> Option<TypeInfo> {
    let (dt, shape) = tensor_type(vi)?;
    Some(TypeInfo {
        dtype: dt,
        shape: shape.map(|s| {
            s.into_iter()
                .map(|d| match d {
                    Dim::Fixed(v) if v >= 0 => Some(v),
                    _ => None,
                })
                .collect()
        }),
    })
}

fn tensor_info(t: &TensorProto) -> TypeInfo {
    TypeInfo {
        dtype: t.data_type(),
        shape: Some(t.dims.iter().map(|&d| Some(d)).collect()),
    }
}

fn float_const(t: &TensorProto) -> Option<Vec<f64>> {
    if crate::proto::numel(t) > 16 {
        return None;
    }
    match DataType::try_from(t.data_type()).ok()? {
        DataType::Float => tensor_values::<f32>(t)
            .ok()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DataType::Double => tensor_values::<f64>(t).ok(),
        _ => None,
    }
}

/// Small int64 constants, and bool ones as 0/1 (flags such as Dropout's training_mode).
fn int_const(t: &TensorProto) -> Option<Vec<i64>> {
    if t.dims.len() > 1 || crate::proto::numel(t) > 64 {
        return None;
    }
    match DataType::try_from(t.data_type()).ok()? {
        DataType::Int64 => tensor_values::<i64>(t).ok(),
        DataType::Bool => tensor_values::<bool>(t)
            .ok()
            .map(|v| v.into_iter().map(i64::from).collect()),
        _ => None,
    }
}

/// Broadcast two shapes (numpy rules).
pub fn broadcast(a: &[Option<i64>], b: &[Option<i64>]) -> Vec<Option<i64>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                Some(1)
            };
            let db = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                Some(1)
            };
            match (da, db) {
                (Some(1), d) | (d, Some(1)) => d,
                (Some(x), Some(y)) if x == y => Some(x),
                (Some(x), None) | (None, Some(x)) => Some(x),
                _ => None,
            }
        })
        .collect()
}

fn norm_axis(a: i64, r: usize) -> usize {
    if a < 0 {
        (a + r as i64).max(0) as usize
    } else {
        a as usize
    }
}

/// Infer types for every value of the graph (nodes must be in topological order).
pub fn infer(g: &Graph) -> Types {
    let mut t = Types::default();
    for vi in g.inputs.iter().chain(&g.value_info).chain(&g.outputs) {
        if let Some(ti) = from_declared(vi) {
            t.values.insert(vi.name().to_string(), ti);
        }
    }
    for init in &g.initializers {
        t.values.insert(init.name().to_string(), tensor_info(init));
        if let Some(c) = int_const(init) {
            t.partial.insert(
                init.name().to_string(),
                c.iter().copied().map(Some).collect(),
            );
            t.consts.insert(init.name().to_string(), c);
        }
        if let Some(c) = float_const(init) {
            t.fconsts.insert(init.name().to_string(), c);
        }
    }
    for n in &g.nodes {
        let outs = infer_node(n, &t, g.opset());
        for (i, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            if let Some(ti) = outs.get(i).cloned().flatten() {
                // Prefer what we computed, but keep declared dims we could not derive.
                let merged = match t.values.get(o) {
                    Some(decl) if decl.dtype == ti.dtype => merge(decl, &ti),
                    _ => ti,
                };
                t.values.insert(o.clone(), merged);
            }
        }
        fold_consts(n, &mut t);
    }
    t
}

fn merge(decl: &TypeInfo, inf: &TypeInfo) -> TypeInfo {
    let shape = match (&decl.shape, &inf.shape) {
        (Some(d), Some(i)) if d.len() == i.len() => {
            Some(d.iter().zip(i).map(|(a, b)| b.or(*a)).collect())
        }
        (_, Some(i)) => Some(i.clone()),
        (d, None) => d.clone(),
    };
    TypeInfo {
        dtype: inf.dtype,
        shape,
    }
}

/// Fold small int64 shape computations so Reshape targets and axes are known: values
/// are propagated elementwise with unknown (`None`) elements where only the run knows.
fn fold_consts(n: &NodeProto, t: &mut Types) {
    let p = |i: usize| {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|v| t.partial.get(v))
            .cloned()
    };
    let full = |i: usize| p(i).and_then(|v| v.into_iter().collect::<Option<Vec<i64>>>());
    let out = n.output.first().cloned().unwrap_or_default();
    let bin = |f: fn(i64, i64) -> Option<i64>| -> Option<Vec<Option<i64>>> {
        let (a, b) = (p(0)?, p(1)?);
        let len = a.len().max(b.len());
        if !(a.len() == len || a.len() == 1) || !(b.len() == len || b.len() == 1) {
            return None;
        }
        Some(
            (0..len)
                .map(|i| {
                    let x = a[if a.len() == 1 { 0 } else { i }];
                    let y = b[if b.len() == 1 { 0 } else { i }];
                    x.zip(y).and_then(|(x, y)| f(x, y))
                })
                .collect(),
        )
    };
    let is_int = |i: usize| n.input.get(i).and_then(|v| t.dtype(v)) == Some(DataType::Int64 as i32);
    let v: Option<Vec<Option<i64>>> = match n.op_type() {
        "Constant" => n
            .attr_t("value")
            .and_then(int_const)
            .or_else(|| n.attr_ints("value_ints"))
            .or_else(|| n.attr_i("value_int").map(|x| vec![x]))
            .map(|v| v.into_iter().map(Some).collect()),
        "Shape" => t.shape(&n.input[0]).map(|s| {
            let r = s.len();
            let start = norm_axis(n.attr_i("start").unwrap_or(0), r).min(r);
            let end = norm_axis(n.attr_i("end").unwrap_or(r as i64), r).min(r);
            s[start..end.max(start)].to_vec()
        }),
        "Size" => t
            .shape(&n.input[0])
            .map(|s| vec![s.iter().try_fold(1i64, |a, d| d.map(|d| a * d))]),
        "Concat" => n
            .input
            .iter()
            .map(|i| t.partial.get(i).cloned())
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        "Identity" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" => p(0),
        "Cast" if n.attr_i("to") == Some(DataType::Int64 as i64) => p(0),
        "Add" if is_int(0) => bin(|a, b| a.checked_add(b)),
        "Sub" if is_int(0) => bin(|a, b| a.checked_sub(b)),
        "Mul" if is_int(0) => bin(|a, b| a.checked_mul(b)),
        // Integer Div truncates toward zero, as Rust's `/` does.
        "Div" if is_int(0) => bin(|a, b| a.checked_div(b)),
        // Mod follows the divisor's sign unless fmod=1 (then the dividend's, like `%`).
        "Mod" if is_int(0) && n.attr_i("fmod").unwrap_or(0) != 0 => bin(|a, b| a.checked_rem(b)),
        "Mod" if is_int(0) => bin(|a, b| {
            a.checked_rem(b).map(|r| {
                if r != 0 && (r < 0) != (b < 0) {
                    r + b
                } else {
                    r
                }
            })
        }),
        "Neg" if is_int(0) => p(0).map(|v| v.into_iter().map(|x| x.map(|x| -x)).collect()),
        "Gather" => {
            let (data, idx) = (p(0), full(1));
            data.zip(idx).and_then(|(d, idx)| {
                idx.iter()
                    .map(|&i| {
                        let i = if i < 0 { i + d.len() as i64 } else { i };
                        d.get(i as usize).copied()
                    })
                    .collect()
            })
        }
        "Slice" => {
            let (data, st, en) = (p(0), full(1), full(2));
            let steps = if n.input.len() > 4 && !n.input[4].is_empty() {
                full(4)
            } else {
                Some(vec![1])
            };
            match (data, st, en, steps) {
                (Some(d), Some(st), Some(en), Some(sp))
                    if st.len() == 1 && en.len() == 1 && sp == [1] =>
                {
                    let len = d.len() as i64;
                    let fix = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
                    let (a, b) = (fix(st[0]), fix(en[0]));
                    Some(d[a..b.max(a)].to_vec())
                }
                _ => None,
            }
        }
        "ConstantOfShape" => {
            let val = n
                .attr_t("value")
                .and_then(int_const)
                .and_then(|v| v.first().copied())
                .unwrap_or(0);
            full(0)
                .filter(|s| s.len() == 1 && s[0] <= 64)
                .map(|s| vec![Some(val); s[0] as usize])
        }
        "Range" => match (full(0), full(1), full(2)) {
            (Some(a), Some(b), Some(c)) if c[0] != 0 && ((b[0] - a[0]) / c[0]).abs() <= 64 => {
                let mut v = vec![];
                let mut x = a[0];
                while (c[0] > 0 && x < b[0]) || (c[0] < 0 && x > b[0]) {
                    v.push(Some(x));
                    x += c[0];
                }
                Some(v)
            }
            _ => None,
        },
        "Max" | "Min" if is_int(0) && n.input.len() == 2 => {
            if n.op_type() == "Max" {
                bin(|a, b| Some(a.max(b)))
            } else {
                bin(|a, b| Some(a.min(b)))
            }
        }
        _ => None,
    };
    if n.op_type() == "Constant"
        && let Some(f) = n
            .attr_t("value")
            .and_then(float_const)
            .or_else(|| n.attr_f("value_float").map(|x| vec![x as f64]))
    {
        t.fconsts.insert(out.clone(), f);
    }
    if let Some(v) = v.filter(|v| v.len() <= 64) {
        if let Some(full) = v.iter().copied().collect::<Option<Vec<i64>>>() {
            t.consts.insert(out.clone(), full);
        }
        t.partial.insert(out, v);
    }
}

fn infer_node(n: &NodeProto, t: &Types, opset: i64) -> Vec<Option<TypeInfo>> {
    let get = |i: usize| {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|v| t.get(v))
            .cloned()
    };
    let dt0 = get(0).map(|x| x.dtype).unwrap_or(DataType::Float as i32);
    let shape0 = get(0).and_then(|x| x.shape);
    let same = || vec![get(0)];
    let mk = |dtype: i32, shape: Option<Vec<Option<i64>>>| Some(TypeInfo { dtype, shape });
    let cst = |i: usize| n.input.get(i).and_then(|v| t.consts.get(v)).cloned();
    let axes_of = |slot: usize| -> Option<Vec<i64>> {
        if opset >= 13 && n.input.len() > slot && !n.input[slot].is_empty() {
            cst(slot)
        } else {
            n.attr_ints("axes")
        }
    };
    match n.op_type() {
        "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "Erf" | "Gelu" | "Neg" | "Abs" | "Exp"
        | "Log" | "Sqrt" | "Reciprocal" | "Softmax" | "LogSoftmax" | "Identity" | "Clip"
        | "Elu" | "Selu" | "HardSigmoid" | "Softplus" | "Softsign" | "Sin" | "Cos" | "Floor"
        | "Ceil" | "Round" | "Sign" | "HardSwish" | "Mish" | "CumSum" | "Trilu"
        | "RandomNormalLike" | "RandomUniformLike" | "LRN" => same(),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "Mod"
        | "PRelu" => {
            let mut shape = shape0;
            for i in 1..n.input.len() {
                shape = match (shape, get(i).and_then(|x| x.shape)) {
                    (Some(a), Some(b)) => Some(broadcast(&a, &b)),
                    _ => None,
                };
            }
            vec![mk(dt0, shape)]
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let shape = match (shape0, get(1).and_then(|x| x.shape)) {
                (Some(a), Some(b)) => Some(broadcast(&a, &b)),
                _ => None,
            };
            vec![mk(DataType::Bool as i32, shape)]
        }
        "Not" | "IsNaN" | "IsInf" => vec![mk(DataType::Bool as i32, shape0)],
        "Where" => {
            let dt = get(1).map(|x| x.dtype).unwrap_or(dt0);
            let mut shape = shape0;
            for i in 1..3 {
                shape = match (shape, get(i).and_then(|x| x.shape)) {
                    (Some(a), Some(b)) => Some(broadcast(&a, &b)),
                    _ => None,
                };
            }
            vec![mk(dt, shape)]
        }
        "Cast" => vec![mk(n.attr_i("to").unwrap_or(1) as i32, shape0)],
        "CastLike" => vec![mk(get(1).map(|x| x.dtype).unwrap_or(dt0), shape0)],
        "Shape" => {
            let r = shape0.map(|s| s.len() as i64);
            let len = r.map(|r| {
                let ru = r as usize;
                let s = norm_axis(n.attr_i("start").unwrap_or(0), ru).min(ru);
                let e = norm_axis(n.attr_i("end").unwrap_or(r), ru).min(ru);
                e.saturating_sub(s) as i64
            });
            vec![mk(DataType::Int64 as i32, Some(vec![len]))]
        }
        "Size" => vec![mk(DataType::Int64 as i32, Some(vec![]))],
        "Constant" => {
            let v = n.attr_t("value").map(tensor_info).or_else(|| {
                n.attr_ints("value_ints")
                    .filter(|v| !v.is_empty())
                    .map(|v| TypeInfo {
                        dtype: DataType::Int64 as i32,
                        shape: Some(vec![Some(v.len() as i64)]),
                    })
            });
            let v = v.or_else(|| {
                n.attr_i("value_int").map(|_| TypeInfo {
                    dtype: DataType::Int64 as i32,
                    shape: Some(vec![]),
                })
            });
            let v = v.or_else(|| {
                n.attr_f("value_float").map(|_| TypeInfo {
                    dtype: DataType::Float as i32,
                    shape: Some(vec![]),
                })
            });
            vec![v]
        }
        "ConstantOfShape" => {
            let dt = n
                .attr_t("value")
                .map(|x| x.data_type())
                .unwrap_or(DataType::Float as i32);
            let shape = cst(0)
                .map(|c| c.into_iter().map(Some).collect())
                .or_else(|| {
                    get(0)
                        .and_then(|x| x.shape)
                        .and_then(|s| s.first().copied().flatten())
                        .map(|r| vec![None; r as usize])
                });
            vec![mk(dt, shape)]
        }
        "MatMul" => {
            let shape = match (shape0, get(1).and_then(|x| x.shape)) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                    let (a2, b2) = (
                        if a.len() == 1 {
                            vec![Some(1), a[0]]
                        } else {
                            a.clone()
                        },
                        if b.len() == 1 {
                            vec![b[0], Some(1)]
                        } else {
                            b.clone()
                        },
                    );
                    let batch = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
                    let mut s = batch;
                    if a.len() > 1 {
                        s.push(a2[a2.len() - 2]);
                    }
                    if b.len() > 1 {
                        s.push(b2[b2.len() - 1]);
                    }
                    Some(s)
                }
                _ => None,
            };
            vec![mk(dt0, shape)]
        }
        "Gemm" => {
            let (ta, tb) = (
                n.attr_i("transA").unwrap_or(0) != 0,
                n.attr_i("transB").unwrap_or(0) != 0,
            );
            let m = shape0.as_ref().and_then(|s| {
                if s.len() == 2 {
                    Some(if ta { s[1] } else { s[0] })
                } else {
                    None
                }
            });
            let nn = get(1).and_then(|x| x.shape).and_then(|s| {
                if s.len() == 2 {
                    Some(if tb { s[0] } else { s[1] })
                } else {
                    None
                }
            });
            vec![mk(dt0, Some(vec![m.flatten(), nn.flatten()]))]
        }
        "Conv" | "MaxPool" | "AveragePool" | "ConvTranspose" => {
            let shape = shape0.map(|s| {
                let mut out = vec![s[0]];
                let c = if matches!(n.op_type(), "Conv" | "ConvTranspose") {
                    get(1).and_then(|w| w.shape).and_then(|w| {
                        if n.op_type() == "Conv" {
                            w[0]
                        } else {
                            w.get(1)
                                .copied()
                                .flatten()
                                .map(|c| c * n.attr_i("group").unwrap_or(1))
                        }
                    })
                } else {
                    s.get(1).copied().flatten()
                };
                out.push(c);
                out.extend(std::iter::repeat_n(None, s.len().saturating_sub(2)));
                // Spatial dims, where everything is known.
                let k = n
                    .attr_ints("kernel_shape")
                    .filter(|k| !k.is_empty())
                    .or_else(|| {
                        get(1)
                            .and_then(|w| w.static_shape())
                            .map(|w| w[2..].to_vec())
                    });
                let auto = n.attr_s("auto_pad").unwrap_or_default();
                if let Some(k) = k
                    && n.op_type() != "ConvTranspose"
                {
                    let nd = k.len();
                    let st = n
                        .attr_ints("strides")
                        .filter(|v| !v.is_empty())
                        .unwrap_or(vec![1; nd]);
                    let dl = n
                        .attr_ints("dilations")
                        .filter(|v| !v.is_empty())
                        .unwrap_or(vec![1; nd]);
                    let pd = n
                        .attr_ints("pads")
                        .filter(|v| !v.is_empty())
                        .unwrap_or(vec![0; 2 * nd]);
                    let ceil = n.attr_i("ceil_mode").unwrap_or(0) != 0;
                    for i in 0..nd.min(s.len().saturating_sub(2)) {
                        if let Some(h) = s[2 + i] {
                            let ek = dl[i] * (k[i] - 1) + 1;
                            let o = match auto.as_str() {
                                "SAME_UPPER" | "SAME_LOWER" => (h + st[i] - 1) / st[i],
                                "VALID" => (h - ek) / st[i] + 1,
                                _ => {
                                    let num = h + pd[i] + pd[i + nd] - ek;
                                    if ceil {
                                        (num + st[i] - 1) / st[i] + 1
                                    } else {
                                        num / st[i] + 1
                                    }
                                }
                            };
                            out[2 + i] = Some(o);
                        }
                    }
                }
                out
            });
            let mut v = vec![mk(dt0, shape.clone())];
            if n.op_type() == "MaxPool" {
                v.push(mk(DataType::Int64 as i32, shape));
            }
            v
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            vec![mk(
                dt0,
                shape0.map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| if i < 2 { *d } else { Some(1) })
                        .collect()
                }),
            )]
        }
        "BatchNormalization" => {
            let c = get(1);
            vec![get(0), c.clone(), c.clone(), c.clone(), c]
        }
        "LayerNormalization" => {
            let r = shape0.as_ref().map(|s| s.len());
            let axis = n.attr_i("axis").unwrap_or(-1);
            let stat = shape0.as_ref().zip(r).map(|(s, r)| {
                let a = norm_axis(axis, r);
                s.iter()
                    .enumerate()
                    .map(|(i, d)| if i < a { *d } else { Some(1) })
                    .collect()
            });
            let sdt = n.attr_i("stash_type").unwrap_or(1) as i32;
            vec![get(0), mk(sdt, stat.clone()), mk(sdt, stat)]
        }
        "Dropout" => vec![get(0), mk(DataType::Bool as i32, shape0)],
        "Flatten" => {
            let shape = shape0.map(|s| {
                let a = norm_axis(n.attr_i("axis").unwrap_or(1), s.len());
                let p = |v: &[Option<i64>]| v.iter().try_fold(1i64, |acc, d| d.map(|d| acc * d));
                vec![p(&s[..a]), p(&s[a..])]
            });
            vec![mk(dt0, shape)]
        }
        "Reshape" => {
            let partial = n.input.get(1).and_then(|v| t.partial.get(v)).cloned();
            let shape = cst(1).map(|target| {
                let allowzero = n.attr_i("allowzero").unwrap_or(0) != 0;
                let mut out: Vec<Option<i64>> = target
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match d {
                        0 if !allowzero => {
                            shape0.as_ref().and_then(|s| s.get(i).copied().flatten())
                        }
                        -1 => None,
                        d => Some(d),
                    })
                    .collect();
                if let Some(pos) = target.iter().position(|&d| d == -1) {
                    let total = shape0
                        .as_ref()
                        .and_then(|s| s.iter().try_fold(1i64, |a, d| d.map(|d| a * d)));
                    let rest = out
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != pos)
                        .try_fold(1i64, |a, (_, d)| d.map(|d| a * d));
                    if let (Some(t), Some(r)) = (total, rest)
                        && r != 0
                    {
                        out[pos] = Some(t / r);
                    }
                }
                out
            });
            let shape = shape.or_else(|| {
                partial.map(|p| {
                    let allowzero = n.attr_i("allowzero").unwrap_or(0) != 0;
                    p.iter()
                        .enumerate()
                        .map(|(i, d)| match d {
                            Some(0) if !allowzero => {
                                shape0.as_ref().and_then(|s| s.get(i).copied().flatten())
                            }
                            Some(d) if *d > 0 => Some(*d),
                            _ => None,
                        })
                        .collect()
                })
            });
            let shape = shape.or_else(|| {
                get(1)
                    .and_then(|s| s.shape)
                    .and_then(|s| s.first().copied().flatten())
                    .map(|r| vec![None; r as usize])
            });
            vec![mk(dt0, shape)]
        }
        "Transpose" => {
            let shape = shape0.map(|s| {
                let perm = n
                    .attr_ints("perm")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                perm.iter()
                    .map(|&p| s.get(p as usize).copied().flatten())
                    .collect()
            });
            vec![mk(dt0, shape)]
        }
        "Unsqueeze" => {
            let shape = shape0.zip(axes_of(1)).map(|(s, axes)| {
                let r = s.len() + axes.len();
                let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect();
                let mut it = s.into_iter();
                (0..r)
                    .map(|i| {
                        if axes.contains(&i) {
                            Some(1)
                        } else {
                            it.next().flatten()
                        }
                    })
                    .collect()
            });
            vec![mk(dt0, shape)]
        }
        "Squeeze" => {
            let shape = shape0.and_then(|s| {
                let r = s.len();
                match axes_of(1) {
                    Some(axes) => {
                        let axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect();
                        Some(
                            s.into_iter()
                                .enumerate()
                                .filter(|(i, _)| !axes.contains(i))
                                .map(|(_, d)| d)
                                .collect(),
                        )
                    }
                    None if s.iter().all(Option::is_some) => {
                        Some(s.into_iter().filter(|d| *d != Some(1)).collect())
                    }
                    None => None,
                }
            });
            vec![mk(dt0, shape)]
        }
        "Concat" => {
            let shapes: Option<Vec<Vec<Option<i64>>>> = (0..n.input.len())
                .map(|i| get(i).and_then(|x| x.shape))
                .collect();
            let shape = shapes.and_then(|ss| {
                let first = ss.first()?.clone();
                let a = norm_axis(n.attr_i("axis").unwrap_or(0), first.len());
                let mut out = first;
                out[a] = ss
                    .iter()
                    .try_fold(0i64, |acc, s| s.get(a).copied().flatten().map(|d| acc + d));
                Some(out)
            });
            let shape = shape.or_else(|| {
                shape0.map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| {
                            if i as i64 == n.attr_i("axis").unwrap_or(0) {
                                None
                            } else {
                                *d
                            }
                        })
                        .collect()
                })
            });
            vec![mk(dt0, shape)]
        }
        "Split" => {
            let k = n.output.len();
            let axis = n.attr_i("axis").unwrap_or(0);
            let sizes = if opset >= 13 {
                cst(1)
            } else {
                n.attr_ints("split")
            };
            (0..k)
                .map(|i| {
                    mk(
                        dt0,
                        shape0.clone().map(|mut s| {
                            let a = norm_axis(axis, s.len());
                            s[a] = match &sizes {
                                Some(sz) => sz.get(i).copied(),
                                None => s[a].filter(|d| d % k as i64 == 0).map(|d| d / k as i64),
                            };
                            s
                        }),
                    )
                })
                .collect()
        }
        "Slice" => {
            let shape = shape0.map(|s| {
                let r = s.len();
                let axes: Vec<usize> = match cst(3) {
                    Some(a) => a.iter().map(|&a| norm_axis(a, r)).collect(),
                    None if n.input.len() > 3 && !n.input[3].is_empty() => (0..r).collect(),
                    None => (0..cst(1).map(|v| v.len()).unwrap_or(r)).collect(),
                };
                let (st, en, sp) = (cst(1), cst(2), cst(4));
                let mut out = s.clone();
                for (j, &a) in axes.iter().enumerate() {
                    out[a] = match (s[a], &st, &en) {
                        (Some(d), Some(st), Some(en)) => {
                            let step = sp.as_ref().map(|v| v[j]).unwrap_or(1);
                            let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
                            let fix = |v: i64| if v < 0 { v + d } else { v };
                            if step > 0 {
                                let (b, e) = (clamp(fix(st[j]), 0, d), clamp(fix(en[j]), 0, d));
                                Some(((e - b).max(0) + step - 1) / step)
                            } else {
                                let (b, e) =
                                    (clamp(fix(st[j]), -1, d - 1), clamp(fix(en[j]), -1, d - 1));
                                Some(((b - e).max(0) + (-step) - 1) / (-step))
                            }
                        }
                        _ => None,
                    };
                }
                out
            });
            vec![mk(dt0, shape)]
        }
        "Gather" => {
            let shape = shape0.zip(get(1).and_then(|x| x.shape)).map(|(d, i)| {
                let a = norm_axis(n.attr_i("axis").unwrap_or(0), d.len());
                let mut out = d[..a].to_vec();
                out.extend(i);
                out.extend_from_slice(&d[a + 1..]);
                out
            });
            vec![mk(dt0, shape)]
        }
        "GatherElements" => vec![mk(dt0, get(1).and_then(|x| x.shape))],
        "Expand" => {
            let target = n.input.get(1).and_then(|v| t.partial.get(v)).cloned();
            let shape = match (shape0, target) {
                (Some(a), Some(c)) => Some(broadcast(&a, &c)),
                (Some(a), None) => get(1)
                    .and_then(|x| x.shape)
                    .and_then(|s| s[0])
                    .map(|r| vec![None; (r as usize).max(a.len())]),
                _ => None,
            };
            vec![mk(dt0, shape)]
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd"
        | "ReduceLogSumExp" | "ReduceL2" | "ReduceL1" | "ReduceSumSquare" | "ReduceLogSum" => {
            let keep = n.attr_i("keepdims").unwrap_or(1) != 0;
            let from_input = n.op_type() == "ReduceSum" && opset >= 13 || opset >= 18;
            let axes = if from_input {
                if n.input.len() > 1 && !n.input[1].is_empty() {
                    cst(1)
                } else {
                    Some(vec![])
                }
            } else {
                Some(n.attr_ints("axes").unwrap_or_default())
            };
            let noop = n.attr_i("noop_with_empty_axes").unwrap_or(0) != 0;
            let shape = shape0.zip(axes).map(|(s, axes)| {
                let r = s.len();
                let axes: Vec<usize> = if axes.is_empty() && !noop {
                    (0..r).collect()
                } else {
                    axes.iter().map(|&a| norm_axis(a, r)).collect()
                };
                s.into_iter()
                    .enumerate()
                    .filter_map(|(i, d)| {
                        if axes.contains(&i) {
                            if keep { Some(Some(1)) } else { None }
                        } else {
                            Some(d)
                        }
                    })
                    .collect()
            });
            vec![mk(dt0, shape)]
        }
        "ArgMax" | "ArgMin" => {
            let keep = n.attr_i("keepdims").unwrap_or(1) != 0;
            let shape = shape0.map(|s| {
                let a = norm_axis(n.attr_i("axis").unwrap_or(0), s.len());
                s.into_iter()
                    .enumerate()
                    .filter_map(|(i, d)| {
                        if i == a {
                            if keep { Some(Some(1)) } else { None }
                        } else {
                            Some(d)
                        }
                    })
                    .collect()
            });
            vec![mk(DataType::Int64 as i32, shape)]
        }
        "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" => {
            let red = n.attr_s("reduction").unwrap_or_else(|| "mean".into());
            let shape = if red == "none" {
                get(1).and_then(|x| x.shape)
            } else {
                Some(vec![])
            };
            vec![mk(dt0, shape), get(0)]
        }
        "OneHot" => {
            let depth = cst(1).and_then(|v| v.first().copied());
            let shape = shape0.map(|s| {
                let r = s.len() + 1;
                let a = norm_axis(n.attr_i("axis").unwrap_or(-1), r);
                let mut out = s;
                out.insert(a.min(r - 1), depth);
                out
            });
            vec![get(2).map(|v| TypeInfo {
                dtype: v.dtype,
                shape,
            })]
        }
        "NonZero" => vec![mk(
            DataType::Int64 as i32,
            shape0.map(|s| vec![Some(s.len() as i64), None]),
        )],
        "Range" => vec![mk(dt0, Some(vec![None]))],
        _ => vec![],
    }
}
