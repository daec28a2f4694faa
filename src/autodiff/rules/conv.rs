//! Conv (1-D, 2-D, 3-D; strides, pads incl. auto_pad, dilations, groups incl. depthwise).
//! For X[N,C,H..], W[M,C/g,k..], Y[N,M,Ho..], stride s, dilation d, pads p:
//! - dX = ConvTranspose(dY, W, strides s, pads p, dilations d, group g,
//!   output_padding = H − ((Ho−1)·s − p_begin − p_end + d·(k−1) + 1)); when H is not
//!   known statically, output_padding = s−1 and the result is sliced to Shape(X).
//! - dW with one Conv for any group count: X is regrouped to [C/g, g·N, H..] (batch C/g,
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

fn weight_grad(c: &mut GradCtx, dy: &str, x: &str, geo: &Geo) -> Result<String> {
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
