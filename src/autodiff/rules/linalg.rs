//! MatMul (numpy semantics: batched, broadcast, 1-D operands) and Gemm (alpha, beta,
//! transA, transB, optional broadcast C).
//! MatMul: dA = dY·Bᵀ, dB = Aᵀ·dY, each summed over broadcast batch dims.
//! Gemm: Y = α·op(A)·op(B) + β·C; the four transpose cases map onto Gemm again.

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::{attr_float, attr_int};

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("MatMul", matmul);
    r.add("Gemm", gemm);
}

/// Swap the last two axes of a value of rank `r`.
fn t_last(c: &mut GradCtx, v: &str, r: usize) -> String {
    let mut perm: Vec<i64> = (0..r as i64).collect();
    perm.swap(r - 2, r - 1);
    c.transpose(v, &perm)
}

fn matmul(c: &mut GradCtx) -> Out {
    let (a, b, y) = (c.x(0), c.x(1), c.y(0));
    let (ra, rb) = (c.rank(&a)?, c.rank(&b)?);
    let mut dy = c.dy0();
    // Promote 1-D operands to matrices, as MatMul does.
    let (a2, b2) = (a.clone(), b.clone());
    let (a2, ra2) = if ra == 1 {
        let ax = c.ints(&[0]);
        (c.op("Unsqueeze", &[&a2, &ax]), 2)
    } else {
        (a2, ra)
    };
    let (b2, rb2) = if rb == 1 {
        let ax = c.ints(&[1]);
        (c.op("Unsqueeze", &[&b2, &ax]), 2)
    } else {
        (b2, rb)
    };
    // dY regains the dims the promotion removed: [.., 1, N] / [.., M, 1]; a vector·vector
    // product's scalar dY becomes [1, 1] (one Unsqueeze: axis −2 is out of range on a scalar).
    let restore: &[i64] = match (ra == 1, rb == 1) {
        (true, true) => &[0, 1],
        (true, false) => &[-2],
        (false, true) => &[-1],
        (false, false) => &[],
    };
    if !restore.is_empty() {
        let ax = c.ints(restore);
        dy = c.op("Unsqueeze", &[&dy, &ax]);
    }
    let ry = ra2.max(rb2);
    let ys = c.shape(&y);
    let batch_y: Option<Vec<Option<i64>>> = ys.map(|s| {
        let s = s.clone();
        let k = s
            .len()
            .saturating_sub(if ra == 1 || rb == 1 { 1 } else { 2 });
        s[..k.min(ry - 2)].to_vec()
    });
    let mut out = vec![None, None];
    if c.needs(0) {
        let bt = t_last(c, &b2, rb2);
        let g = c.op("MatMul", &[&dy, &bt]); // [batch_y..., M, K]
        out[0] = Some(reduce_batch(c, &g, &a, ra, ra2, ry, &batch_y)?);
    }
    if c.needs(1) {
        let at = t_last(c, &a2, ra2);
        let g = c.op("MatMul", &[&at, &dy]); // [batch_y..., K, N]
        out[1] = Some(reduce_batch(c, &g, &b, rb, rb2, ry, &batch_y)?);
    }
    Ok(out)
}

/// Sum a product gradient `g` of rank `ry` over the batch dims its operand (of rank
/// `r2` after promotion, `r` before) was broadcast along, then reshape to the operand.
fn reduce_batch(
    c: &mut GradCtx,
    g: &str,
    x: &str,
    r: usize,
    r2: usize,
    ry: usize,
    batch_y: &Option<Vec<Option<i64>>>,
) -> Result<String> {
    let lead = ry - r2;
    let xs = c.shape(x);
    // Batch dims of x that are 1 while the output's are not (or may not be).
    let mut axes: Vec<i64> = (0..lead as i64).collect();
    let mut dynamic = false;
    if r2 > 2 {
        let xb = xs.as_ref().map(|s| s[..r2 - 2].to_vec());
        for k in 0..r2 - 2 {
            let dx = xb.as_ref().and_then(|v| v[k]);
            let dyv = batch_y
                .as_ref()
                .and_then(|v| v.get(lead + k).copied().flatten());
            match (dx, dyv) {
                (Some(1), Some(1)) => {}
                (Some(1), _) => axes.push((lead + k) as i64),
                (Some(_), _) => {}
                (None, _) => {
                    // Same symbolic dim as the output's batch dim? Then nothing to sum.
                    let same = batch_y
                        .as_ref()
                        .is_some_and(|v| v.get(lead + k).is_some_and(|d| d.is_none()))
                        && c.shape(x).is_some();
                    if !same {
                        dynamic = true;
                    }
                }
            }
        }
    }
    let res = if dynamic {
        // Let the general helper decide at run time.
        return c.unbroadcast(g, x, g);
    } else if axes.is_empty() {
        g.to_string()
    } else if axes.len() == lead {
        c.reduce_sum(g, &axes, false)
    } else {
        let s = c.reduce_sum(g, &axes, true);
        c.reshape_like(&s, x)
    };
    Ok(if r != r2 {
        c.reshape_like(&res, x)
    } else {
        res
    })
}

fn gemm(c: &mut GradCtx) -> Out {
    let (a, b, dy) = (c.x(0), c.x(1), c.dy0());
    let alpha = c.attr_f("alpha", 1.0);
    let beta = c.attr_f("beta", 1.0);
    let (ta, tb) = (c.attr_i("transA", 0) != 0, c.attr_i("transB", 0) != 0);
    let g = |c: &mut GradCtx, p: &str, q: &str, t1: bool, t2: bool| {
        c.op_a(
            "Gemm",
            &[p, q],
            vec![
                attr_float("alpha", alpha),
                attr_int("transA", t1 as i64),
                attr_int("transB", t2 as i64),
            ],
        )
    };
    let da = c.needs(0).then(|| match (ta, tb) {
        (false, false) => g(c, &dy, &b, false, true),
        (false, true) => g(c, &dy, &b, false, false),
        (true, false) => g(c, &b, &dy, false, true),
        (true, true) => g(c, &b, &dy, true, true),
    });
    let db = c.needs(1).then(|| match (ta, tb) {
        (false, false) => g(c, &a, &dy, true, false),
        (true, false) => g(c, &a, &dy, false, false),
        (false, true) => g(c, &dy, &a, true, false),
        (true, true) => g(c, &dy, &a, true, true),
    });
    let dc = if c.needs(2) {
        let (cc, y) = (c.x(2), c.y(0));
        let s = if beta != 1.0 {
            let k = c.scalar(&cc, beta as f64);
            c.op("Mul", &[&dy, &k])
        } else {
            dy.clone()
        };
        Some(c.unbroadcast(&s, &cc, &y)?)
    } else {
        None
    };
    Ok(vec![da, db, dc])
}
