//! Reductions: ReduceSum (axes as input since opset 13), ReduceMean and ReduceLogSumExp
//! (axes as attribute before opset 18, as input from 18).
//! The gradient is the output gradient broadcast back over the reduced axes (restored
//! with Unsqueeze when keepdims=0); ReduceMean divides by the reduced count and
//! ReduceLogSumExp multiplies by softmax = exp(x − y).

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("ReduceSum", reduce_sum);
    r.add("ReduceMean", reduce_mean);
    r.add("ReduceLogSumExp", reduce_logsumexp);
}

/// The reduced axes (normalized, sorted), or `None` for "all axes".
fn axes(c: &GradCtx) -> Result<Option<Vec<i64>>> {
    let from_input = c.node.op_type() == "ReduceSum" || c.opset >= 18;
    let raw = if from_input {
        if c.has_x(1) {
            let a = c.x(1);
            Some(
                c.const_ints(&a)
                    .ok_or_else(|| c.err(format!("the axes input '{a}' must be a constant")))?,
            )
        } else {
            None
        }
    } else {
        c.attr_ints("axes")
    };
    let noop = c.attr_i("noop_with_empty_axes", 0) != 0;
    match raw {
        None => Ok(None),
        Some(v) if v.is_empty() => {
            if noop {
                Ok(Some(vec![]))
            } else {
                Ok(None)
            }
        }
        Some(v) => {
            let x = c.x(0);
            let r = c.rank(&x)? as i64;
            let mut v: Vec<i64> = v
                .into_iter()
                .map(|a| if a < 0 { a + r } else { a })
                .collect();
            v.sort_unstable();
            Ok(Some(v))
        }
    }
}

/// `g` (shaped like the output) broadcast back to the input's shape.
fn expand_back(c: &mut GradCtx, g: &str) -> Result<String> {
    let x = c.x(0);
    let keep = c.attr_i("keepdims", 1) != 0;
    let g = match (keep, axes(c)?) {
        (false, Some(a)) if !a.is_empty() => {
            let ax = c.ints(&a);
            c.op("Unsqueeze", &[g, &ax])
        }
        _ => g.to_string(),
    };
    let s = c.shape_of(&x);
    Ok(c.op("Expand", &[&g, &s]))
}

fn reduce_sum(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    Ok(vec![Some(expand_back(c, &dy)?), None])
}

/// Number of elements reduced per output element, as a scalar of the input's type.
fn count(c: &mut GradCtx) -> Result<String> {
    let (x, y) = (c.x(0), c.y(0));
    let known = |v: &str| {
        c.types
            .get(v)
            .and_then(|t| t.static_shape())
            .map(|s| s.iter().product::<i64>())
    };
    if let (Some(nx), Some(ny)) = (known(&x), known(&y))
        && ny > 0
    {
        return Ok(c.scalar(&x, (nx / ny) as f64));
    }
    let sx = c.op("Size", &[&x]);
    let sy = c.op("Size", &[&y]);
    let q = c.op("Div", &[&sx, &sy]);
    let dt = c.dtype(&x);
    Ok(c.op_a("Cast", &[&q], vec![crate::proto::attr_int("to", dt as i64)]))
}

fn reduce_mean(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    let e = expand_back(c, &dy)?;
    let n = count(c)?;
    Ok(vec![Some(c.op("Div", &[&e, &n])), None])
}

fn reduce_logsumexp(c: &mut GradCtx) -> Out {
    let (dy, x, y) = (c.dy0(), c.x(0), c.y(0));
    let ge = expand_back(c, &dy)?;
    let ye = expand_back(c, &y)?;
    let d = c.op("Sub", &[&x, &ye]);
    let p = c.op("Exp", &[&d]);
    Ok(vec![Some(c.op("Mul", &[&ge, &p])), None])
}
