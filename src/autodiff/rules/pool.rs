//! Pooling: MaxPool, AveragePool, GlobalAveragePool.
//! - MaxPool: with the flat indices I of the maxima (the Indices output, which regraft
//!   adds where the export left it out), dX = Reshape(ScatterElements(zeros[size X],
//!   flatten I, flatten dY, reduction add), Shape X). Exact with overlapping windows.
//! - AveragePool is linear: dX = ConvTranspose(dY / count, ones[C,1,k..], group C) with
//!   the forward's strides and pads, where count is the number of elements each window
//!   averaged (k^d, or only the in-bounds ones when count_include_pad = 0).
//! - GlobalAveragePool: dX = Expand(dY, Shape X) / (H·W·...).

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::{DataType, attr_int, attr_ints, attr_string, attr_tensor, fill};

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("MaxPool", max_pool);
    r.add("AveragePool", average_pool);
    r.add("GlobalAveragePool", global_average_pool);
}

fn max_pool(c: &mut GradCtx) -> Out {
    let (dy, x, idx) = (c.dy0(), c.x(0), c.y(1));
    if idx.is_empty() {
        return Err(c.err("MaxPool needs its Indices output to be differentiated"));
    }
    if c.attr_i("storage_order", 0) != 0 {
        return Err(c.err("MaxPool with storage_order=1 (column-major indices) is not supported"));
    }
    let size = c.op("Size", &[&x]);
    let one = c.ints(&[1]);
    let size1 = c.op("Reshape", &[&size, &one]);
    let dt = c.dtype(&x);
    let z = if dt == DataType::Double as i32 {
        fill::<f64>(0.0)
    } else {
        fill::<f32>(0.0)
    };
    let zeros = c.op_a("ConstantOfShape", &[&size1], vec![attr_tensor("value", z)]);
    let m1 = c.ints(&[-1]);
    let fi = c.op("Reshape", &[&idx, &m1]);
    let fg = c.op("Reshape", &[&dy, &m1]);
    let mut attrs = vec![attr_int("axis", 0)];
    if c.opset >= 16 {
        attrs.push(attr_string("reduction", "add"));
    } else {
        // Without reduction, overlapping windows would overwrite instead of add.
        let k = c.attr_ints("kernel_shape").unwrap_or_default();
        let s = c.attr_ints("strides").unwrap_or(vec![1; k.len()]);
        if k.iter().zip(&s).any(|(k, s)| k > s) {
            return Err(c.err(
                "MaxPool with overlapping windows needs opset 16 or later to be differentiated",
            ));
        }
    }
    let sc = c.op_a("ScatterElements", &[&zeros, &fi, &fg], attrs);
    Ok(vec![Some(c.reshape_like(&sc, &x))])
}

fn average_pool(c: &mut GradCtx) -> Out {
    let (dy, x, y) = (c.dy0(), c.x(0), c.y(0));
    let r = c.rank(&x)?;
    let nd = r - 2;
    let k = c
        .attr_ints("kernel_shape")
        .ok_or_else(|| c.err("AveragePool without kernel_shape"))?;
    let s = c.attr_ints("strides").unwrap_or(vec![1; nd]);
    let d = c.attr_ints("dilations").unwrap_or(vec![1; nd]);
    let auto = c.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    if !matches!(auto.as_str(), "NOTSET" | "" | "VALID") {
        return Err(c.err(format!(
            "AveragePool with auto_pad {auto} is not supported; export with explicit pads"
        )));
    }
    if c.attr_i("ceil_mode", 0) != 0 {
        return Err(c.err("AveragePool with ceil_mode=1 is not supported"));
    }
    let p = if auto == "VALID" {
        vec![0; 2 * nd]
    } else {
        c.attr_ints("pads").unwrap_or(vec![0; 2 * nd])
    };
    let include_pad = c.attr_i("count_include_pad", 0) != 0;
    let c_dim = c
        .shape(&x)
        .and_then(|s| s[1])
        .ok_or_else(|| c.err("AveragePool gradient needs the channel count statically"))?;
    let kk: i64 = k.iter().product();
    // Divide dY by each window's count.
    let scaled = if include_pad || p.iter().all(|&v| v == 0) {
        let n = c.scalar(&x, kk as f64);
        c.op("Div", &[&dy, &n])
    } else {
        let ones_t = if c.dtype(&x) == DataType::Double as i32 {
            fill::<f64>(1.0)
        } else {
            fill::<f32>(1.0)
        };
        let sx = c.shape_of(&x);
        let ones = c.op_a(
            "ConstantOfShape",
            &[&sx],
            vec![attr_tensor("value", ones_t)],
        );
        // A depthwise Conv of ones over ones counts each window's in-bounds elements.
        let w = ones_kernel(c, &x, c_dim, &k);
        let cnt = c.op_a(
            "Conv",
            &[&ones, &w],
            vec![
                attr_ints("strides", &s),
                attr_ints("pads", &p),
                attr_ints("dilations", &d),
                attr_int("group", c_dim),
            ],
        );
        c.op("Div", &[&dy, &cnt])
    };
    let w = ones_kernel(c, &x, c_dim, &k);
    let xs = c.shape(&x);
    let ys = c.shape(&y);
    let op: Option<Vec<i64>> = (0..nd)
        .map(|i| {
            let h = xs.as_ref()?[2 + i]?;
            let ho = ys.as_ref()?[2 + i]?;
            Some(h - ((ho - 1) * s[i] - p[i] - p[nd + i] + d[i] * (k[i] - 1) + 1))
        })
        .collect();
    let op = op.filter(|o| o.iter().zip(&s).all(|(&o, &st)| o >= 0 && o < st));
    let attrs = |op: Vec<i64>| {
        vec![
            attr_ints("strides", &s),
            attr_ints("pads", &p),
            attr_ints("dilations", &d),
            attr_int("group", c_dim),
            attr_ints("output_padding", &op),
        ]
    };
    let dx = match op {
        Some(op) => c.op_a("ConvTranspose", &[&scaled, &w], attrs(op)),
        None => {
            let op: Vec<i64> = s.iter().map(|&v| v - 1).collect();
            let full = c.op_a("ConvTranspose", &[&scaled, &w], attrs(op));
            let sx = c.op("Shape", &[&x]);
            let zeros = c.ints(&vec![0; r]);
            c.op("Slice", &[&full, &zeros, &sx])
        }
    };
    Ok(vec![Some(dx)])
}

/// A constant depthwise kernel of ones, [C, 1, k..].
fn ones_kernel(c: &mut GradCtx, x: &str, ch: i64, k: &[i64]) -> String {
    let dims: Vec<i64> = [ch, 1].into_iter().chain(k.iter().copied()).collect();
    let n: i64 = dims.iter().product();
    if c.dtype(x) == DataType::Double as i32 {
        c.b.constant::<f64>(&dims, &vec![1.0; n as usize])
    } else {
        c.b.constant::<f32>(&dims, &vec![1.0; n as usize])
    }
}

fn global_average_pool(c: &mut GradCtx) -> Out {
    let (dy, x, y) = (c.dy0(), c.x(0), c.y(0));
    let sx = c.shape_of(&x);
    let e = c.op("Expand", &[&dy, &sx]);
    let known = |v: &str| {
        c.types
            .get(v)
            .and_then(|t| t.static_shape())
            .map(|s| s.iter().product::<i64>())
    };
    let n = match (known(&x), known(&y)) {
        (Some(a), Some(b)) if b > 0 => c.scalar(&x, (a / b) as f64),
        _ => {
            let a = c.op("Size", &[&x]);
            let b = c.op("Size", &[&y]);
            let q = c.op("Div", &[&a, &b]);
            let dt = c.dtype(&x);
            c.op_a("Cast", &[&q], vec![attr_int("to", dt as i64)])
        }
    };
    Ok(vec![Some(c.op("Div", &[&e, &n]))])
}
