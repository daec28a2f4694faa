//! Fused loss ops: SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss, with
//! reduction none/sum/mean, optional class weights and ignore_index, scores [N, C].
//! With w_i = weight[y_i]·[y_i ≠ ignore_index] and s = dL (sum, none) or dL/Σw (mean):
//! SoftmaxCrossEntropyLoss: dZ_i = (softmax(Z_i) − onehot(y_i))·w_i·s_i;
//! NegativeLogLikelihoodLoss: dX_i = −onehot(y_i)·w_i·s_i.

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::{DataType, attr_int};

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("SoftmaxCrossEntropyLoss", softmax_ce);
    r.add("NegativeLogLikelihoodLoss", nll);
}

/// One-hot of the labels (as the scores' type) and the per-sample weight column [N, 1].
fn onehot_and_weights(c: &mut GradCtx) -> Result<(String, String)> {
    let (z, y) = (c.x(0), c.x(1));
    if c.rank(&z)? != 2 {
        return Err(c.err("loss gradients support scores of shape [N, C] only"));
    }
    let dt = c.dtype(&z);
    let shape = c.shape_of(&z);
    let one_idx = c.ints(&[1]);
    let depth = c.op_a("Gather", &[&shape, &one_idx], vec![attr_int("axis", 0)]);
    // ONNX Runtime's CPU OneHot has kernels for int64 indices with float32 values only
    // (none for float64 values or int32 indices with an int64 depth): build it in float32
    // from int64 labels, then cast to the scores' type.
    let y64 = if c.dtype(&y) != DataType::Int64 as i32 {
        c.op_a("Cast", &[&y], vec![attr_int("to", DataType::Int64 as i64)])
    } else {
        y.clone()
    };
    let vals = c.b.constant::<f32>(&[2], &[0.0, 1.0]);
    let oh = c.op_a("OneHot", &[&y64, &depth, &vals], vec![attr_int("axis", -1)]);
    let oh = if dt != DataType::Float as i32 {
        c.op_a("Cast", &[&oh], vec![attr_int("to", dt as i64)])
    } else {
        oh
    };
    let mut w: Option<String> = None;
    if c.has_x(2) {
        let wt = c.x(2);
        let g = c.op_a("Gather", &[&wt, &y], vec![attr_int("axis", 0)]);
        w = Some(g);
    }
    if let Some(ii) = crate::proto::NodeExt::attr_i(c.node, "ignore_index") {
        let iv = c.b.constant::<i64>(&[], &[ii]);
        let eq = c.op("Equal", &[&y64, &iv]);
        let ne = c.op("Not", &[&eq]);
        let m = c.op_a("Cast", &[&ne], vec![attr_int("to", dt as i64)]);
        w = Some(match w {
            Some(w) => c.op("Mul", &[&w, &m]),
            None => m,
        });
    }
    let w = match w {
        Some(w) => w,
        // Σ over classes of the one-hot: 1 for every in-range label.
        None => c.op_a("ReduceSum", &[&oh, &one_idx], vec![attr_int("keepdims", 0)]),
    };
    Ok((oh, w))
}

/// Scale per sample: w_i·s_i as a column [N, 1].
fn scale(c: &mut GradCtx, w: &str) -> Result<String> {
    let dl = c.dy0();
    let red = c.attr_s("reduction").unwrap_or_else(|| "mean".into());
    let col = c.ints(&[1]);
    let s = match red.as_str() {
        "none" => c.op("Mul", &[w, &dl]),
        "sum" => c.op("Mul", &[w, &dl]),
        "mean" => {
            let zero_axes = c.ints(&[0]);
            let total = c.op_a("ReduceSum", &[w, &zero_axes], vec![attr_int("keepdims", 0)]);
            let q = c.op("Div", &[&dl, &total]);
            c.op("Mul", &[w, &q])
        }
        other => return Err(c.err(format!("unknown reduction '{other}'"))),
    };
    Ok(c.op("Unsqueeze", &[&s, &col]))
}

fn softmax_ce(c: &mut GradCtx) -> Out {
    let z = c.x(0);
    let p = c.op_a("Softmax", &[&z], vec![attr_int("axis", 1)]);
    let mut terms = Vec::new();
    if c.dy(0).is_some() {
        let (oh, w) = onehot_and_weights(c)?;
        let s = scale(c, &w)?;
        let d = c.op("Sub", &[&p, &oh]);
        terms.push(c.op("Mul", &[&d, &s]));
    }
    // The log_prob output is LogSoftmax(Z) along the classes: dZ += dLP − P·Σ_c dLP.
    if let Some(dlp) = c.dy(1) {
        let s = c.reduce_sum(&dlp, &[1], true);
        let m = c.op("Mul", &[&p, &s]);
        terms.push(c.op("Sub", &[&dlp, &m]));
    }
    let dz = match terms.len() {
        1 => terms.pop().expect("one term"),
        _ => {
            let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
            c.op("Sum", &refs)
        }
    };
    Ok(vec![Some(dz), None, None])
}

fn nll(c: &mut GradCtx) -> Out {
    let (oh, w) = onehot_and_weights(c)?;
    let s = scale(c, &w)?;
    let m = c.op("Mul", &[&oh, &s]);
    Ok(vec![Some(c.op("Neg", &[&m])), None, None])
}
