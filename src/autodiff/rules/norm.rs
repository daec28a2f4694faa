//! BatchNormalization (training mode with batch statistics, and inference mode with the
//! running statistics) and LayerNormalization.
//! With x̂ = (x − μ)·σ⁻¹ over the normalized axes and γ the scale:
//! dβ = Σ dY, dγ = Σ dY·x̂, dX = γ·σ⁻¹·(dY − mean(dY) − x̂·mean(dY·x̂)) (batch statistics,
//! computed as one per-channel affine combination of dY and x − μ);
//! with fixed statistics (inference) dX = γ·σ⁻¹·dY. Statistics are recomputed from x in
//! the backward graph; running-statistic outputs carry no gradient.

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::attr_int;

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("BatchNormalization", batch_norm);
    r.add("LayerNormalization", layer_norm);
}

/// Mean over constant axes with keepdims, in the opset's form.
pub(crate) fn mean_keep(c: &mut GradCtx, x: &str, axes: &[i64]) -> String {
    if c.opset >= 18 {
        let a = c.ints(axes);
        c.op_a("ReduceMean", &[x, &a], vec![attr_int("keepdims", 1)])
    } else {
        c.op_a(
            "ReduceMean",
            &[x],
            vec![
                crate::proto::attr_ints("axes", axes),
                attr_int("keepdims", 1),
            ],
        )
    }
}

/// x̂ and σ⁻¹ recomputed from x over `axes`.
fn normalize(c: &mut GradCtx, x: &str, axes: &[i64], eps: f64) -> (String, String) {
    let mu = mean_keep(c, x, axes);
    let xc = c.op("Sub", &[x, &mu]);
    let sq = c.op("Mul", &[&xc, &xc]);
    let var = mean_keep(c, &sq, axes);
    let e = c.scalar(x, eps);
    let ve = c.op("Add", &[&var, &e]);
    let sd = c.op("Sqrt", &[&ve]);
    let istd = c.op("Reciprocal", &[&sd]);
    let xhat = c.op("Mul", &[&xc, &istd]);
    (xhat, istd)
}

/// Reshape a per-channel vector [C] to [1, C, 1, ...] for an input of rank r.
fn channel_col(c: &mut GradCtx, v: &str, r: usize) -> String {
    let mut shape = vec![1i64; r];
    shape[1] = -1;
    let s = c.ints(&shape);
    c.op("Reshape", &[v, &s])
}

fn batch_norm(c: &mut GradCtx) -> Out {
    let (dy, x, gamma) = (c.dy0(), c.x(0), c.x(1));
    let r = c.rank(&x)?;
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    // Training mode: the opset-14+ attribute, or (opset < 14 exports) the presence of
    // running-statistic outputs.
    let training = c.attr_i("training_mode", 0) != 0 || (c.opset < 14 && c.node.output.len() > 1);
    let axes: Vec<i64> = std::iter::once(0).chain(2..r as i64).collect();
    let g = channel_col(c, &gamma, r);
    let mut out = vec![None; c.node.input.len()];
    if training {
        // With xc = x − μ, Sdy = Σ dY, Sdx = Σ dY·xc per channel (n elements each):
        // dβ = Sdy, dγ = σ⁻¹·Sdx, and dX = a·dY + b·xc + k with the per-channel
        // a = γ·σ⁻¹, b = −a·σ⁻²·Sdx/n, k = −a·Sdy/n: ten passes over the feature map.
        let mu = mean_keep(c, &x, &axes);
        let xc = c.op("Sub", &[&x, &mu]);
        let sq = c.op("Mul", &[&xc, &xc]);
        let var = mean_keep(c, &sq, &axes);
        let e = c.scalar(&x, eps);
        let ve = c.op("Add", &[&var, &e]);
        let sd = c.op("Sqrt", &[&ve]);
        let istd = c.op("Reciprocal", &[&sd]);
        let sdy = c.reduce_sum(&dy, &axes, true);
        let p = c.op("Mul", &[&dy, &xc]);
        let sdx = c.reduce_sum(&p, &axes, true);
        if c.needs(1) {
            let dg = c.op("Mul", &[&sdx, &istd]);
            out[1] = Some(c.reshape_like(&dg, &gamma));
        }
        if c.needs(2) {
            out[2] = Some(c.reshape_like(&sdy, &c.x(2)));
        }
        if c.needs(0) {
            let n = group_size(c, &x, &axes);
            let a = c.op("Mul", &[&g, &istd]);
            let an = c.op("Div", &[&a, &n]);
            let i2 = c.op("Mul", &[&istd, &istd]);
            let t = c.op("Mul", &[&an, &i2]);
            let t = c.op("Mul", &[&t, &sdx]);
            let b = c.op("Neg", &[&t]);
            let k = c.op("Mul", &[&an, &sdy]);
            let k = c.op("Neg", &[&k]);
            let ady = c.op("Mul", &[&dy, &a]);
            let bxc = c.op("Mul", &[&xc, &b]);
            out[0] = Some(c.op("Sum", &[&ady, &bxc, &k]));
        }
        return Ok(out);
    }
    // Inference mode: fixed statistics.
    let (mean, var) = (c.x(3), c.x(4));
    let m = channel_col(c, &mean, r);
    let v = channel_col(c, &var, r);
    let e = c.scalar(&x, eps);
    let ve = c.op("Add", &[&v, &e]);
    let sd = c.op("Sqrt", &[&ve]);
    let istd = c.op("Reciprocal", &[&sd]);
    if c.needs(1) {
        let xc = c.op("Sub", &[&x, &m]);
        let xhat = c.op("Mul", &[&xc, &istd]);
        let p = c.op("Mul", &[&dy, &xhat]);
        out[1] = Some(c.reduce_sum(&p, &axes, false));
    }
    if c.needs(2) {
        out[2] = Some(c.reduce_sum(&dy, &axes, false));
    }
    if c.needs(0) {
        let gi = c.op("Mul", &[&g, &istd]);
        out[0] = Some(c.op("Mul", &[&dy, &gi]));
    }
    Ok(out)
}

fn layer_norm(c: &mut GradCtx) -> Out {
    let (x, gamma) = (c.x(0), c.x(1));
    let r = c.rank(&x)? as i64;
    let axis = c.attr_i("axis", -1);
    let axis = if axis < 0 { axis + r } else { axis };
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    let norm_axes: Vec<i64> = (axis..r).collect();
    let lead: Vec<i64> = (0..axis).collect();
    let (xhat, istd) = normalize(c, &x, &norm_axes, eps);
    let mut out = vec![None; c.node.input.len()];
    let sum_lead = |c: &mut GradCtx, v: &str| {
        if lead.is_empty() {
            v.to_string()
        } else {
            c.reduce_sum(v, &lead, false)
        }
    };
    let mut dx_terms = Vec::new();
    if let Some(dy) = c.dy(0) {
        if c.needs(1) {
            let p = c.op("Mul", &[&dy, &xhat]);
            let s = sum_lead(c, &p);
            out[1] = Some(c.reshape_like(&s, &gamma));
        }
        if c.needs(2) {
            let b = c.x(2);
            let s = sum_lead(c, &dy);
            out[2] = Some(c.reshape_like(&s, &b));
        }
        if c.needs(0) {
            let dxh = c.op("Mul", &[&dy, &gamma]);
            let m1 = mean_keep(c, &dxh, &norm_axes);
            let p = c.op("Mul", &[&dxh, &xhat]);
            let m2 = mean_keep(c, &p, &norm_axes);
            let t = c.op("Mul", &[&xhat, &m2]);
            let d1 = c.op("Sub", &[&dxh, &m1]);
            let d2 = c.op("Sub", &[&d1, &t]);
            dx_terms.push(c.op("Mul", &[&istd, &d2]));
        }
    }
    // The Mean and InvStdDev outputs depend on x as well (their gradients were dropped
    // before): dMean/dx = 1/K, dInvStdDev/dx = −σ⁻²·x̂/K over a group of K elements. Their
    // type is stash_type's (float32 by default), so their gradients are cast to x's.
    if c.needs(0) && (c.dy(1).is_some() || c.dy(2).is_some()) {
        let dt = c.dtype(&x);
        let stat_grad = |c: &mut GradCtx, i: usize| {
            let g = c.dy(i)?;
            let y = c.y(i);
            Some(if c.dtype(&y) != dt {
                c.op_a("Cast", &[&g], vec![attr_int("to", dt as i64)])
            } else {
                g
            })
        };
        let k = group_size(c, &x, &norm_axes);
        if let Some(dm) = stat_grad(c, 1) {
            let t = c.op("Div", &[&dm, &k]);
            let sx = c.shape_of(&x);
            dx_terms.push(c.op("Expand", &[&t, &sx]));
        }
        if let Some(di) = stat_grad(c, 2) {
            let i2 = c.op("Mul", &[&istd, &istd]);
            let a = c.op("Mul", &[&di, &i2]);
            let b = c.op("Div", &[&a, &k]);
            let m = c.op("Mul", &[&xhat, &b]);
            dx_terms.push(c.op("Neg", &[&m]));
        }
    }
    out[0] = match dx_terms.len() {
        0 => None,
        1 => dx_terms.pop(),
        _ => {
            let refs: Vec<&str> = dx_terms.iter().map(String::as_str).collect();
            Some(c.op("Sum", &refs))
        }
    };
    Ok(out)
}

/// The number of elements of x over `axes` (a normalization group: one channel of a
/// batch, or one sample's normalized dims), as a scalar of x's type.
fn group_size(c: &mut GradCtx, x: &str, axes: &[i64]) -> String {
    if let Some(n) = c.shape(x).and_then(|s| {
        axes.iter().try_fold(1i64, |a, &i| {
            s.get(i as usize).copied().flatten().map(|d| a * d)
        })
    }) {
        return c.scalar(x, n as f64);
    }
    let sx = c.op("Shape", &[x]);
    let idx = c.ints(axes);
    let dims = c.op_a("Gather", &[&sx, &idx], vec![attr_int("axis", 0)]);
    let n = c.op_a("ReduceProd", &[&dims], vec![attr_int("keepdims", 0)]);
    let dt = c.dtype(x);
    c.op_a("Cast", &[&n], vec![attr_int("to", dt as i64)])
}
