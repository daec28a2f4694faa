//! Shape and indexing ops: Identity, Cast, CastLike, Reshape, Flatten, Squeeze, Unsqueeze,
//! Transpose, Concat, Split, Slice (step 1), Gather (any axis; embedding tables),
//! GatherElements, Expand, Where, Dropout (training mode with mask, ratio 0 included).

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;
use crate::proto::{DataType, attr_int, attr_string, attr_tensor, fill};

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("Identity", identity);
    r.add("Cast", cast);
    r.add("CastLike", cast);
    r.add("Reshape", reshape_back);
    r.add("Flatten", reshape_back);
    r.add("Squeeze", reshape_back);
    r.add("Unsqueeze", reshape_back);
    r.add("Transpose", transpose);
    r.add("Concat", concat);
    r.add("Split", split);
    r.add("Slice", slice);
    r.add("Gather", gather);
    r.add("GatherElements", gather_elements);
    r.add("Expand", expand);
    r.add("Where", where_);
    r.add("Dropout", dropout);
}

fn identity(c: &mut GradCtx) -> Out {
    Ok(vec![Some(c.dy0())])
}

fn cast(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let dt = c.dtype(&x);
    let mut v = vec![Some(c.op_a(
        "Cast",
        &[&dy],
        vec![attr_int("to", dt as i64)],
    ))];
    v.extend((1..c.node.input.len()).map(|_| None));
    Ok(v)
}

fn reshape_back(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let mut v = vec![Some(c.reshape_like(&dy, &x))];
    v.extend((1..c.node.input.len()).map(|_| None));
    Ok(v)
}

fn transpose(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let perm = match c.attr_ints("perm") {
        Some(p) => p,
        None => (0..c.rank(&x)? as i64).rev().collect(),
    };
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(vec![Some(c.transpose(&dy, &inv))])
}

/// The size of each input along `axis`, as a 1-D int64 value.
fn sizes_along(c: &mut GradCtx, axis: i64) -> Result<String> {
    let n = c.node.input.len();
    let mut known = Vec::new();
    for i in 0..n {
        let x = c.x(i);
        let r = c.rank(&x)? as i64;
        let a = if axis < 0 { axis + r } else { axis };
        known.push(
            c.shape(&x)
                .and_then(|s| s.get(a as usize).copied().flatten()),
        );
    }
    if let Some(k) = known.iter().copied().collect::<Option<Vec<i64>>>() {
        return Ok(c.ints(&k));
    }
    let mut parts = Vec::new();
    for i in 0..n {
        let x = c.x(i);
        let r = c.rank(&x)? as i64;
        let a = if axis < 0 { axis + r } else { axis };
        let s = c.op("Shape", &[&x]);
        let idx = c.ints(&[a]);
        parts.push(c.op_a("Gather", &[&s, &idx], vec![attr_int("axis", 0)]));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(c.op_a("Concat", &refs, vec![attr_int("axis", 0)]))
}

fn concat(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    let axis = c.attr_i("axis", 0);
    let sizes = sizes_along(c, axis)?;
    let n = c.node.input.len();
    let outs =
        c.b.node_n("Split", &[&dy, &sizes], vec![attr_int("axis", axis)], n);
    Ok(outs
        .into_iter()
        .enumerate()
        .map(|(i, o)| c.needs(i).then_some(o))
        .collect())
}

fn split(c: &mut GradCtx) -> Out {
    let axis = c.attr_i("axis", 0);
    let mut parts = Vec::new();
    for i in 0..c.node.output.len() {
        parts.push(match c.dy(i) {
            Some(g) => g,
            None => {
                let y = c.y(i);
                c.zeros_like(&y)
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let dx = c.op_a("Concat", &refs, vec![attr_int("axis", axis)]);
    Ok(vec![Some(dx), None])
}

fn slice(c: &mut GradCtx) -> Out {
    // dX = Pad(dY) with zeros where the slice did not reach (step 1 only).
    let (dy, x) = (c.dy0(), c.x(0));
    let r = c.rank(&x)?;
    if c.has_x(4) {
        let st = c.x(4);
        match c.const_ints(&st) {
            Some(s) if s.iter().all(|&v| v == 1) => {}
            _ => return Err(c.err("Slice is differentiated for step 1 only")),
        }
    }
    let (starts, ends) = (c.x(1), c.x(2));
    let axes: Vec<i64> = if c.has_x(3) {
        let a = c.x(3);
        c.const_ints(&a)
            .ok_or_else(|| c.err("the axes of a differentiated Slice must be constant"))?
    } else {
        let n = c.const_ints(&starts).map(|v| v.len()).unwrap_or(r);
        (0..n as i64).collect()
    };
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| {
            if a < 0 {
                (a + r as i64) as usize
            } else {
                a as usize
            }
        })
        .collect();
    // Static pads when the sliced dims and bounds are known.
    let xs = c.shape(&x);
    let (sv, ev) = (c.const_ints(&starts), c.const_ints(&ends));
    if let (Some(xs), Some(sv), Some(ev)) = (&xs, &sv, &ev) {
        let dims: Option<Vec<i64>> = axes.iter().map(|&a| xs[a]).collect();
        if let Some(dims) = dims {
            let mut pads = vec![0i64; 2 * r];
            for (j, &a) in axes.iter().enumerate() {
                let d = dims[j];
                let norm = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d);
                let (s, e) = (norm(sv[j]), norm(ev[j]));
                pads[a] = s;
                pads[r + a] = d - e.max(s);
            }
            let p = c.ints(&pads);
            return Ok(vec![
                Some(c.op_a("Pad", &[&dy, &p], vec![attr_string("mode", "constant")])),
                None,
                None,
                None,
                None,
            ]);
        }
    }
    // Dynamic pads: clamp starts/ends against the runtime dims.
    let shape = c.op("Shape", &[&x]);
    let ax = c.ints(&axes.iter().map(|&a| a as i64).collect::<Vec<_>>());
    let dims = c.op_a("Gather", &[&shape, &ax], vec![attr_int("axis", 0)]);
    let zero = c.b.constant::<i64>(&[], &[0]);
    let norm = |c: &mut GradCtx, v: &str| {
        let neg = c.op("Less", &[v, &zero]);
        let wrapped = c.op("Add", &[v, &dims]);
        let w = c.op("Where", &[&neg, &wrapped, v]);
        let lo = c.op("Max", &[&w, &zero]);
        c.op("Min", &[&lo, &dims])
    };
    let s = norm(c, &starts);
    let e = norm(c, &ends);
    let e = c.op("Max", &[&e, &s]);
    let after = c.op("Sub", &[&dims, &e]);
    let zeros = c.ints(&vec![0; 2 * r]);
    let ax_end = c.ints(&axes.iter().map(|&a| (a + r) as i64).collect::<Vec<_>>());
    let idx = c.op_a("Concat", &[&ax, &ax_end], vec![attr_int("axis", 0)]);
    let upd = c.op_a("Concat", &[&s, &after], vec![attr_int("axis", 0)]);
    let pads = c.op_a(
        "ScatterElements",
        &[&zeros, &idx, &upd],
        vec![attr_int("axis", 0)],
    );
    Ok(vec![
        Some(c.op_a("Pad", &[&dy, &pads], vec![attr_string("mode", "constant")])),
        None,
        None,
        None,
        None,
    ])
}

fn gather(c: &mut GradCtx) -> Out {
    // Scatter-add dY back into zeros shaped like the data (rows of an embedding table
    // that several indices pick are summed).
    let (dy, data, idx) = (c.dy0(), c.x(0), c.x(1));
    let r = c.rank(&data)? as i64;
    let axis = c.attr_i("axis", 0);
    let axis = if axis < 0 { axis + r } else { axis };
    if c.opset < 16 {
        return Err(
            c.err("differentiating Gather needs opset 16 or later (ScatterND with reduction)")
        );
    }
    let ri = c.rank(&idx)? as i64;
    // Move the gathered axis to the front: data' = [D_axis, rest...].
    let perm: Vec<i64> = std::iter::once(axis)
        .chain((0..r).filter(|&a| a != axis))
        .collect();
    // dY has shape data[:axis] + idx.shape + data[axis+1:]; bring the index dims to the front.
    let ry = r - 1 + ri;
    let yperm: Vec<i64> = (axis..axis + ri)
        .chain(0..axis)
        .chain(axis + ri..ry)
        .collect();
    let dyt = if yperm.iter().enumerate().all(|(i, &p)| i as i64 == p) {
        dy.clone()
    } else {
        c.transpose(&dy, &yperm)
    };
    let flat_i = c.ints(&[-1, 1]);
    let idx2 = c.op("Reshape", &[&idx, &flat_i]);
    // Updates: [M, rest...] where rest = data dims except the axis.
    let dshape = c.shape_of(&data);
    let rest_idx = c.ints(&(0..r).filter(|&a| a != axis).collect::<Vec<_>>());
    let rest = c.op_a("Gather", &[&dshape, &rest_idx], vec![attr_int("axis", 0)]);
    let m1 = c.ints(&[-1]);
    let ushape = c.op_a("Concat", &[&m1, &rest], vec![attr_int("axis", 0)]);
    let upd = c.op("Reshape", &[&dyt, &ushape]);
    // Zeros shaped like the permuted data, in the data's type (a fresh Transpose output
    // has no inferred type, and zeros_like would default to float32).
    let perm_c = c.ints(&perm);
    let pshape = c.op_a("Gather", &[&dshape, &perm_c], vec![attr_int("axis", 0)]);
    let zero = if c.dtype(&data) == DataType::Double as i32 {
        fill::<f64>(0.0)
    } else {
        fill::<f32>(0.0)
    };
    let zeros = c.op_a(
        "ConstantOfShape",
        &[&pshape],
        vec![attr_tensor("value", zero)],
    );
    let acc = c.op_a(
        "ScatterND",
        &[&zeros, &idx2, &upd],
        vec![attr_string("reduction", "add")],
    );
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let dx = if axis == 0 {
        acc
    } else {
        c.transpose(&acc, &inv)
    };
    Ok(vec![Some(dx), None])
}

fn gather_elements(c: &mut GradCtx) -> Out {
    if c.opset < 16 {
        return Err(c.err("differentiating GatherElements needs opset 16 or later (ScatterElements with reduction)"));
    }
    let (dy, data, idx) = (c.dy0(), c.x(0), c.x(1));
    let axis = c.attr_i("axis", 0);
    let z = c.zeros_like(&data);
    let dx = c.op_a(
        "ScatterElements",
        &[&z, &idx, &dy],
        vec![attr_int("axis", axis), attr_string("reduction", "add")],
    );
    Ok(vec![Some(dx), None])
}

fn expand(c: &mut GradCtx) -> Out {
    let (dy, x, y) = (c.dy0(), c.x(0), c.y(0));
    Ok(vec![Some(c.unbroadcast(&dy, &x, &y)?), None])
}

fn where_(c: &mut GradCtx) -> Out {
    let (dy, cond, y) = (c.dy0(), c.x(0), c.y(0));
    let zero = c.scalar(&y, 0.0);
    let mut out = vec![None, None, None];
    if c.needs(1) {
        let g = c.op("Where", &[&cond, &dy, &zero]);
        let x = c.x(1);
        out[1] = Some(c.unbroadcast(&g, &x, &y)?);
    }
    if c.needs(2) {
        let g = c.op("Where", &[&cond, &zero, &dy]);
        let x = c.x(2);
        out[2] = Some(c.unbroadcast(&g, &x, &y)?);
    }
    Ok(out)
}

fn dropout(c: &mut GradCtx) -> Out {
    // Inference mode (no training_mode input, or a constant false) and ratio 0 pass the
    // gradient through; in training mode dX = dY·mask/(1−ratio).
    let dy = c.dy0();
    let training = if c.has_x(2) {
        let t = c.x(2);
        match c.types.consts.get(&t) {
            Some(v) => v.first().copied().unwrap_or(0) != 0,
            None => true,
        }
    } else {
        false
    };
    let ratio_zero = if c.has_x(1) {
        let r = c.x(1);
        crate::autodiff::const_float(c, &r).is_some_and(|v| v == 0.0)
    } else {
        false
    };
    if !training || ratio_zero {
        return Ok(vec![Some(dy), None, None]);
    }
    let mask = c.y(1);
    if mask.is_empty() {
        return Err(c.err("a Dropout in training mode needs its mask output to be differentiated (regraft adds it before differentiating)"));
    }
    let x = c.x(0);
    let dt = c.dtype(&x);
    let m = c.op_a("Cast", &[&mask], vec![attr_int("to", dt as i64)]);
    let g = c.op("Mul", &[&dy, &m]);
    let ratio = if c.has_x(1) {
        c.x(1)
    } else {
        c.scalar(&x, 0.5)
    };
    let ratio = if c.dtype(&ratio) != dt {
        c.op_a("Cast", &[&ratio], vec![attr_int("to", dt as i64)])
    } else {
        ratio
    };
    let one = c.scalar(&x, 1.0);
    let keep = c.op("Sub", &[&one, &ratio]);
    Ok(vec![Some(c.op("Div", &[&g, &keep])), None, None])
}
