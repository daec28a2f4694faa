//! Conv (1-D, 2-D, 3-D; strides, pads incl. auto_pad, dilations, groups incl. depthwise).
//! For X[N,C,H..], W[M,C/g,k..], Y[N,M,Ho..], stride s, dilation d, pads p:
//! - dX = ConvTranspose(dY, W, strides s, pads p, dilations d, group g,
//!   output_padding = H − ((Ho−1)·s − p_begin − p_end + d·(k−1) + 1)); when H is not
//!   known statically, output_padding = s−1 and the result is sliced to Shape(X).
//! - dW, ungrouped, with static per-sample sizes and columns of at most
//!   [`IM2COL_MAX`] elements per sample: im2col by hand. X goes to [N, S.., C], is padded,
//!   and the strided Slices for the K kernel offsets are stacked to cols [K, N·So, C];
//!   dW = dY[M, N·So] · cols (a batched MatMul, [K, M, C]), transposed to [M, C, k..].
//!   ONNX Runtime's Conv with dY as the kernel (below) is 2–3× slower for small feature
//!   maps (tools/bench/conv_weight_grad.py).
//! - dW otherwise, with one Conv for any group count: X is regrouped to [C/g, g·N, H..] (batch C/g,
//!   channels g·N) and dY to [M, N, Ho..] used as the kernel; a Conv with strides d,
//!   dilations s, pads p and group g gives [C/g, M, k'..] ⊇ dWᵀ, sliced to k and
//!   transposed. For g = 1 this is the usual Conv(Xᵀ, dYᵀ).
//! - dB = Σ dY over N and the spatial axes.

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::{attr_int, attr_ints};

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("Conv", conv);
}

/// Resolved geometry of a Conv node.
struct Geo {
    nd: usize,
    k: Vec<i64>,
    s: Vec<i64>,
    d: Vec<i64>,
    /// begin pads then end pads.
    p: Vec<i64>,
    g: i64,
}

fn geometry(c: &GradCtx) -> Result<Geo> {
    let (x, w) = (c.x(0), c.x(1));
    let r = c.rank(&x)?;
    let nd = r - 2;
    let k = match c.attr_ints("kernel_shape") {
        Some(k) => k,
        None => c
            .shape(&w)
            .and_then(|s| s[2..].iter().copied().collect::<Option<Vec<i64>>>())
            .ok_or_else(|| {
                c.err("the kernel size is unknown (no kernel_shape and no static weight shape)")
            })?,
    };
    let s = c.attr_ints("strides").unwrap_or(vec![1; nd]);
    let d = c.attr_ints("dilations").unwrap_or(vec![1; nd]);
    let auto = c.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let p = match auto.as_str() {
        "NOTSET" | "" => c.attr_ints("pads").unwrap_or(vec![0; 2 * nd]),
        "VALID" => vec![0; 2 * nd],
        "SAME_UPPER" | "SAME_LOWER" => {
            let xs = c
                .shape(&x)
                .ok_or_else(|| c.err("auto_pad SAME needs the input's spatial size"))?;
            let mut p = vec![0; 2 * nd];
            for i in 0..nd {
                let h = xs[2 + i]
                    .ok_or_else(|| c.err("auto_pad SAME needs the input's spatial size"))?;
                let o = (h + s[i] - 1) / s[i];
                let total = ((o - 1) * s[i] + d[i] * (k[i] - 1) + 1 - h).max(0);
                let (small, big) = (total / 2, total - total / 2);
                if auto == "SAME_UPPER" {
                    p[i] = small;
                    p[nd + i] = big;
                } else {
                    p[i] = big;
                    p[nd + i] = small;
                }
            }
            p
        }
        other => return Err(c.err(format!("unknown auto_pad '{other}'"))),
    };
    Ok(Geo {
        nd,
        k,
        s,
        d,
        p,
        g: c.attr_i("group", 1),
    })
}

fn conv(c: &mut GradCtx) -> Out {
    let (dy, x, w) = (c.dy0(), c.x(0), c.x(1));
    let geo = geometry(c)?;
    let nd = geo.nd;
    let mut out = vec![None; c.node.input.len()];
    if c.needs(0) {
        let xs = c.shape(&x);
        let ys = c.shape(&c.y(0));
        let stat: Option<Vec<i64>> = (0..nd)
            .map(|i| {
                let h = xs.as_ref()?[2 + i]?;
                let ho = ys.as_ref()?[2 + i]?;
                Some(
                    h - ((ho - 1) * geo.s[i] - geo.p[i] - geo.p[nd + i]
                        + geo.d[i] * (geo.k[i] - 1)
                        + 1),
                )
            })
            .collect();
        let attrs = |op: Vec<i64>| {
            vec![
                attr_ints("strides", &geo.s),
                attr_ints("pads", &geo.p),
                attr_ints("dilations", &geo.d),
                attr_int("group", geo.g),
                attr_ints("kernel_shape", &geo.k),
                attr_ints("output_padding", &op),
            ]
        };
        let valid = |op: &[i64]| {
            op.iter()
                .zip(geo.s.iter().zip(&geo.d))
                .all(|(&o, (&s, &d))| o >= 0 && o < s.max(d))
        };
        out[0] = Some(match stat {
            Some(op) if valid(&op) => c.op_a("ConvTranspose", &[&dy, &w], attrs(op)),
            _ => {
                let op: Vec<i64> = geo.s.iter().map(|&s| s - 1).collect();
                let full = c.op_a("ConvTranspose", &[&dy, &w], attrs(op));
                let sx = c.op("Shape", &[&x]);
                let zeros = c.ints(&vec![0; nd + 2]);
                c.op("Slice", &[&full, &zeros, &sx])
            }
        });
    }
    if c.needs(1) {
        out[1] = Some(weight_grad(c, &dy, &x, &geo)?);
    }
    if c.needs(2) {
        let axes: Vec<i64> = std::iter::once(0).chain(2..(nd + 2) as i64).collect();
        out[2] = Some(c.reduce_sum(&dy, &axes, false));
    }
    Ok(out)
}

/// Largest im2col matrix per sample (elements) for which dW is a MatMul.
pub const IM2COL_MAX: i64 = 1 << 18;

/// dW by im2col when the Conv is ungrouped and the per-sample sizes are static and small
/// enough; None otherwise.
fn weight_grad_im2col(c: &mut GradCtx, dy: &str, x: &str, geo: &Geo) -> Option<String> {
    if geo.g != 1 {
        return None;
    }
    let nd = geo.nd;
    let xs = c.shape(x)?;
    let ys = c.shape(&c.y(0))?;
    let ch = xs.get(1).copied()??;
    let so: Vec<i64> = (0..nd)
        .map(|i| ys.get(2 + i).copied().flatten())
        .collect::<Option<_>>()?;
    let kk: i64 = geo.k.iter().product();
    if ch * kk * so.iter().product::<i64>() > IM2COL_MAX {
        return None;
    }
    let nd = nd as i64;
    // X [N, C, S..] → [N, S.., C], zero-padded on the spatial axes.
    let perm: Vec<i64> = std::iter::once(0).chain(2..2 + nd).chain([1]).collect();
    let xn = c.transpose(x, &perm);
    let xp = if geo.p.iter().any(|&p| p != 0) {
        let mut pads = vec![0i64; 2 * (nd as usize + 2)];
        for i in 0..geo.nd {
            pads[1 + i] = geo.p[i];
            pads[nd as usize + 2 + 1 + i] = geo.p[geo.nd + i];
        }
        let pv = c.ints(&pads);
        c.op("Pad", &[&xn, &pv])
    } else {
        xn
    };
    // One strided slice per kernel offset, in row-major order of the kernel's axes.
    let axes = c.ints(&(1..1 + nd).collect::<Vec<_>>());
    let steps = c.ints(&geo.s);
    let mut cols = Vec::with_capacity(kk as usize);
    for flat in 0..kk {
        let mut rem = flat;
        let mut off = vec![0i64; geo.nd];
        for i in (0..geo.nd).rev() {
            off[i] = rem % geo.k[i];
            rem /= geo.k[i];
        }
        let st: Vec<i64> = (0..geo.nd).map(|i| off[i] * geo.d[i]).collect();
        let en: Vec<i64> = (0..geo.nd)
            .map(|i| st[i] + (so[i] - 1) * geo.s[i] + 1)
            .collect();
        let (sv, ev) = (c.ints(&st), c.ints(&en));
        cols.push(c.op("Slice", &[&xp, &sv, &ev, &axes, &steps]));
    }
    // Stacked on the outer axis (whole-block copies): [K·N, So.., C] → [K, N·So, C].
    let cat = if cols.len() == 1 {
        cols.pop()?
    } else {
        let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
        c.op_a("Concat", &refs, vec![attr_int("axis", 0)])
    };
    let s3 = c.ints(&[kk, -1, ch]);
    let cols = c.op("Reshape", &[&cat, &s3]);
    // dY [N, M, So..] → [M, N·So]
    let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + nd).collect();
    let dyt = c.transpose(dy, &perm);
    let df = c.op_a("Flatten", &[&dyt], vec![attr_int("axis", 1)]);
    // [M, N·So] · [K, N·So, C] → [K, M, C] → [M, C, K] → [M, C, k..]
    let mm = c.op("MatMul", &[&df, &cols]);
    let mt = c.transpose(&mm, &[1, 2, 0]);
    let s4: Vec<i64> = [0, 0].into_iter().chain(geo.k.iter().copied()).collect();
    let s4 = c.ints(&s4);
    Some(c.op("Reshape", &[&mt, &s4]))
}

fn weight_grad(c: &mut GradCtx, dy: &str, x: &str, geo: &Geo) -> Result<String> {
    if let Some(dw) = weight_grad_im2col(c, dy, x, geo) {
        return Ok(dw);
    }
    let nd = geo.nd as i64;
    let g = geo.g;
    // X [N, C, S..] → [N, g, C/g, S..] → [C/g, g, N, S..] → [C/g, g·N, S..]
    let xr = if g == 1 {
        let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + nd).collect();
        c.transpose(x, &perm)
    } else {
        let sx = c.shape_of(x);
        let (n_idx, sp_idx) = (c.ints(&[0]), c.ints(&(2..2 + nd).collect::<Vec<_>>()));
        let n = c.op_a("Gather", &[&sx, &n_idx], vec![attr_int("axis", 0)]);
        let spat = c.op_a("Gather", &[&sx, &sp_idx], vec![attr_int("axis", 0)]);
        let gm = c.ints(&[g, -1]);
        let s5 = c.op_a("Concat", &[&n, &gm, &spat], vec![attr_int("axis", 0)]);
        let x5 = c.op("Reshape", &[x, &s5]);
        let perm: Vec<i64> = [2, 1, 0].into_iter().chain(3..3 + nd).collect();
        let xt = c.transpose(&x5, &perm);
        let m1 = c.ints(&[0, -1]);
        let s4 = c.op_a("Concat", &[&m1, &spat], vec![attr_int("axis", 0)]);
        c.op_a("Reshape", &[&xt, &s4], vec![attr_int("allowzero", 0)])
    };
    // dY [N, M, So..] → [M, N, So..] (the kernel: M output channels, N inputs per group)
    let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + nd).collect();
    let dyt = c.transpose(dy, &perm);
    let r = c.op_a(
        "Conv",
        &[&xr, &dyt],
        vec![
            attr_ints("strides", &geo.d),
            attr_ints("dilations", &geo.s),
            attr_ints("pads", &geo.p),
            attr_int("group", g),
        ],
    );
    // r: [C/g, M, k'..] → slice to k → [M, C/g, k..]
    let starts = c.ints(&vec![0; geo.nd]);
    let ends = c.ints(&geo.k);
    let axes = c.ints(&(2..2 + nd).collect::<Vec<_>>());
    let sl = c.op("Slice", &[&r, &starts, &ends, &axes]);
    let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + nd).collect();
    Ok(c.transpose(&sl, &perm))
}
