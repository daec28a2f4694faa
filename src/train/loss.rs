//! Loss heads added to a forward graph: cross-entropy on logits with integer labels and
//! mean squared error. Both produce the per-sample losses (which the regularizers use)
//! and their mean. Cross-entropy is built from LogSoftmax, OneHot, Mul and reductions,
//! ops every execution provider (CUDA included) runs; the fused
//! SoftmaxCrossEntropyLoss has no CUDA kernel.

use crate::error::{Error, Result};
use crate::ir::infer::infer;
use crate::ir::{Builder, Graph};
use crate::proto::{DataType, Dim, attr_int, attr_ints, is_float, tensor_type, value_info};

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    #[default]
    CrossEntropy,
    Mse,
}

/// Names of what a loss head added.
#[derive(Clone, Debug)]
pub struct LossHead {
    pub labels: String,
    /// Per-sample losses, shape [N].
    pub per_sample: String,
    /// Mean loss, a scalar.
    pub loss: String,
}

/// The graph's logits: `name` if given, else its only floating-point output.
pub fn find_logits(g: &Graph, name: Option<&str>) -> Result<String> {
    if let Some(n) = name {
        let produced = g.nodes.iter().any(|x| x.output.iter().any(|o| o == n))
            || g.outputs.iter().any(|o| o.name() == n);
        if !produced {
            return Err(Error::flag(
                "--logits",
                format!("the model has no value named '{n}'"),
            ));
        }
        return Ok(n.to_string());
    }
    let floats: Vec<&str> = g
        .outputs
        .iter()
        .filter(|o| tensor_type(o).is_some_and(|(dt, _)| is_float(dt)))
        .map(|o| o.name())
        .collect();
    match floats.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::msg(
            "the model has no floating-point output to use as logits",
        )),
        many => Err(Error::flag(
            "--logits",
            format!(
                "the model has several floating-point outputs ({}); name the logits",
                many.join(", ")
            ),
        )),
    }
}

/// Mean over `axes` (keepdims=0), in the form the opset wants.
pub(crate) fn reduce_mean(b: &mut Builder, opset: i64, x: &str, axes: &[i64]) -> String {
    reduce(b, "ReduceMean", opset, x, axes)
}

/// A reduction without keepdims over constant axes, in the opset's form (the axes of
/// ReduceMean, ReduceLogSumExp, ... became an input in opset 18).
pub(crate) fn reduce(b: &mut Builder, op: &str, opset: i64, x: &str, axes: &[i64]) -> String {
    if opset >= 18 {
        let a = b.ints(axes);
        b.op_a(op, &[x, &a], vec![attr_int("keepdims", 0)])
    } else {
        b.op_a(
            op,
            &[x],
            vec![attr_ints("axes", axes), attr_int("keepdims", 0)],
        )
    }
}

/// Add a loss head on `logits` ([N, C]); adds the `labels` input.
pub fn add_loss(g: &mut Graph, kind: LossKind, logits: &str) -> Result<LossHead> {
    let types = infer(g);
    let lt = types.get(logits).cloned();
    let dt = lt
        .as_ref()
        .map(|t| t.dtype)
        .unwrap_or(DataType::Float as i32);
    let rank = lt.as_ref().and_then(|t| t.rank());
    if rank.is_some_and(|r| r != 2) {
        return Err(Error::msg(format!(
            "the logits '{logits}' have rank {}, regraft's loss heads expect [N, C]",
            rank.unwrap_or(0)
        )));
    }
    let opset = g.opset();
    let labels = g.names.fresh("labels");
    let mut b = Builder::new(g, "loss");
    b.prefix = "loss/".into();
    let (per_sample, label_vi) = match kind {
        LossKind::CrossEntropy => {
            let logp = b.op_a("LogSoftmax", &[logits], vec![attr_int("axis", 1)]);
            let shape = b.op("Shape", &[logits]);
            let one = b.ints(&[1]);
            let depth = b.op_a("Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
            // ORT's OneHot has no float64 kernel: build it in float32 and cast.
            let vals = b.constant::<f32>(&[2], &[0.0, 1.0]);
            let oh = b.op_a(
                "OneHot",
                &[&labels, &depth, &vals],
                vec![attr_int("axis", -1)],
            );
            let oh = if dt == DataType::Double as i32 {
                b.op_a("Cast", &[&oh], vec![attr_int("to", dt as i64)])
            } else {
                oh
            };
            let picked = b.op("Mul", &[&logp, &oh]);
            let s = b.op_a("ReduceSum", &[&picked, &one], vec![attr_int("keepdims", 0)]);
            let per = b.op("Neg", &[&s]);
            (
                per,
                value_info(&labels, DataType::Int64 as i32, &[Dim::Param("N".into())]),
            )
        }
        LossKind::Mse => {
            let d = b.op("Sub", &[logits, &labels]);
            let sq = b.op("Mul", &[&d, &d]);
            let per = reduce_mean(&mut b, opset, &sq, &[1]);
            let dims = match lt.as_ref().and_then(|t| t.shape.clone()) {
                Some(s) => s
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(v) if i > 0 => Dim::Fixed(v),
                        _ => Dim::Param(if i == 0 { "N".into() } else { format!("d{i}") }),
                    })
                    .collect(),
                None => vec![Dim::Param("N".into()), Dim::Param("C".into())],
            };
            (per, value_info(&labels, dt, &dims))
        }
    };
    let loss_name = b.fresh_exact("loss");
    let m = reduce_mean(&mut b, opset, &per_sample, &[0]);
    b.node_to("Identity", &[&m], &[&loss_name], vec![]);
    b.patch.add_inputs.push(label_vi);
    g.apply(b.finish())?;
    Ok(LossHead {
        labels,
        per_sample,
        loss: loss_name,
    })
}
