//! `regraft inspect`: what a model holds and what regraft would train in it.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::autodiff::reach::trainable_initializers;
use crate::ir::Graph;
use crate::proto::{Dim, ValueInfoProto, dtype_name, is_float, nbytes, numel, tensor_type};

#[derive(Serialize, Debug)]
pub struct Io {
    pub name: String,
    pub dtype: String,
    /// `null` when the rank is unknown; symbolic dims are strings.
    pub shape: Option<Vec<Dim>>,
}

#[derive(Serialize, Debug)]
pub struct Param {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    pub elements: u64,
    pub bytes: u64,
    /// `trainable`, `buffer` (a non-trainable floating-point tensor such as BatchNorm
    /// running statistics) or `constant` (integer/bool data such as shapes and indices).
    pub kind: &'static str,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub nodes: usize,
    pub ops: BTreeMap<String, usize>,
    pub trainable_parameters: u64,
    pub trainable_bytes: u64,
    pub buffers: u64,
    pub buffer_bytes: u64,
    pub constants: u64,
    pub constant_bytes: u64,
    pub initializers: Vec<Param>,
    /// Op types that appear on a path to an output and have no gradient rule.
    pub ops_without_gradient: Vec<String>,
}

fn io(vi: &ValueInfoProto) -> Io {
    let (dt, shape) = tensor_type(vi).unwrap_or((0, None));
    Io {
        name: vi.name().to_string(),
        dtype: dtype_name(dt).to_string(),
        shape,
    }
}

pub fn inspect(g: &Graph) -> Report {
    let mut ops = BTreeMap::new();
    for n in &g.nodes {
        let key = if n.domain().is_empty() || n.domain() == "ai.onnx" {
            n.op_type().to_string()
        } else {
            format!("{}::{}", n.domain(), n.op_type())
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    let outs: Vec<&str> = g.outputs.iter().map(|o| o.name()).collect();
    let trainable: HashSet<String> = trainable_initializers(g, &outs).into_iter().collect();
    let mut r = Report {
        ir_version: g.model.ir_version(),
        producer: format!("{} {}", g.model.producer_name(), g.model.producer_version())
            .trim()
            .to_string(),
        opsets: g
            .opsets
            .iter()
            .map(|(d, v)| {
                (
                    if d.is_empty() {
                        "ai.onnx".into()
                    } else {
                        d.clone()
                    },
                    *v,
                )
            })
            .collect(),
        inputs: g.real_inputs().map(io).collect(),
        outputs: g.outputs.iter().map(io).collect(),
        nodes: g.nodes.len(),
        ops,
        trainable_parameters: 0,
        trainable_bytes: 0,
        buffers: 0,
        buffer_bytes: 0,
        constants: 0,
        constant_bytes: 0,
        initializers: vec![],
        ops_without_gradient: crate::autodiff::ops_without_rule(g, &outs),
    };
    for t in &g.initializers {
        let (e, b) = (numel(t), nbytes(t));
        let kind = if trainable.contains(t.name()) {
            r.trainable_parameters += e;
            r.trainable_bytes += b;
            "trainable"
        } else if is_float(t.data_type()) {
            r.buffers += e;
            r.buffer_bytes += b;
            "buffer"
        } else {
            r.constants += e;
            r.constant_bytes += b;
            "constant"
        };
        r.initializers.push(Param {
            name: t.name().to_string(),
            dtype: dtype_name(t.data_type()).to_string(),
            shape: t.dims.clone(),
            elements: e,
            bytes: b,
            kind,
        });
    }
    r
}

fn shape_str(s: &Option<Vec<Dim>>) -> String {
    match s {
        None => "?".into(),
        Some(d) => format!(
            "[{}]",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "IR version {}, producer {}",
            self.ir_version,
            if self.producer.is_empty() {
                "?"
            } else {
                &self.producer
            }
        )?;
        let ops: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        writeln!(f, "opsets: {}", ops.join(", "))?;
        writeln!(f, "inputs:")?;
        for i in &self.inputs {
            writeln!(f, "  {:<24} {:<8} {}", i.name, i.dtype, shape_str(&i.shape))?;
        }
        writeln!(f, "outputs:")?;
        for o in &self.outputs {
            writeln!(f, "  {:<24} {:<8} {}", o.name, o.dtype, shape_str(&o.shape))?;
        }
        writeln!(f, "nodes: {}", self.nodes)?;
        let mut ops: Vec<(&String, &usize)> = self.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, c) in ops {
            writeln!(f, "  {op:<24} {c}")?;
        }
        writeln!(
            f,
            "trainable parameters: {} ({})",
            self.trainable_parameters,
            human(self.trainable_bytes)
        )?;
        writeln!(
            f,
            "buffers:              {} ({})",
            self.buffers,
            human(self.buffer_bytes)
        )?;
        writeln!(
            f,
            "constants:            {} ({})",
            self.constants,
            human(self.constant_bytes)
        )?;
        for p in &self.initializers {
            writeln!(
                f,
                "  {:<10} {:<40} {:<8} {:?}",
                p.kind, p.name, p.dtype, p.shape
            )?;
        }
        if self.ops_without_gradient.is_empty() {
            writeln!(f, "gradient rules: every op on a path to an output has one")?;
        } else {
            writeln!(
                f,
                "ops without a gradient rule: {}",
                self.ops_without_gradient.join(", ")
            )?;
        }
        Ok(())
    }
}
