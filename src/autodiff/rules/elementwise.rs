//! Elementwise arithmetic: Add, Sub, Mul, Div, Neg, Pow (constant exponent), Sqrt, Exp,
//! Log, Abs, Reciprocal, Sum, Max and Min (two inputs; the gradient goes to the input
//! that was selected, to the first one on ties). Inputs broadcast (numpy rules), so every input gradient
//! goes through `GradCtx::unbroadcast`.
//! Spec: https://onnx.ai/onnx/operators/ (opset 13+ semantics; unchanged since).

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("Add", add);
    r.add("Sub", sub);
    r.add("Mul", mul);
    r.add("Div", div);
    r.add("Neg", neg);
    r.add("Pow", pow);
    r.add("Sqrt", sqrt);
    r.add("Exp", exp);
    r.add("Log", log);
    r.add("Abs", abs);
    r.add("Reciprocal", reciprocal);
    r.add("Sum", sum);
    r.add("Max", max_min);
    r.add("Min", max_min);
}

/// Gradient `g` (shaped like the output) for input `i`, unbroadcast to its shape.
fn to_input(c: &mut GradCtx, g: &str, i: usize) -> Result<Option<String>> {
    if !c.needs(i) {
        return Ok(None);
    }
    let (x, y) = (c.x(i), c.y(0));
    c.unbroadcast(g, &x, &y).map(Some)
}

fn add(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    Ok(vec![to_input(c, &dy, 0)?, to_input(c, &dy, 1)?])
}

fn sum(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    (0..c.node.input.len())
        .map(|i| to_input(c, &dy, i))
        .collect()
}

fn sub(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    let da = to_input(c, &dy, 0)?;
    let db = if c.needs(1) {
        let n = c.op("Neg", &[&dy]);
        to_input(c, &n, 1)?
    } else {
        None
    };
    Ok(vec![da, db])
}

fn mul(c: &mut GradCtx) -> Out {
    let (dy, a, b) = (c.dy0(), c.x(0), c.x(1));
    let da = if c.needs(0) {
        let g = c.op("Mul", &[&dy, &b]);
        to_input(c, &g, 0)?
    } else {
        None
    };
    let db = if c.needs(1) {
        let g = c.op("Mul", &[&dy, &a]);
        to_input(c, &g, 1)?
    } else {
        None
    };
    Ok(vec![da, db])
}

fn div(c: &mut GradCtx) -> Out {
    let (dy, b, y) = (c.dy0(), c.x(1), c.y(0));
    let da = if c.needs(0) {
        let g = c.op("Div", &[&dy, &b]);
        to_input(c, &g, 0)?
    } else {
        None
    };
    let db = if c.needs(1) {
        // d(a/b)/db = -y/b
        let q = c.op("Div", &[&y, &b]);
        let m = c.op("Mul", &[&dy, &q]);
        let g = c.op("Neg", &[&m]);
        to_input(c, &g, 1)?
    } else {
        None
    };
    Ok(vec![da, db])
}

fn neg(c: &mut GradCtx) -> Out {
    let dy = c.dy0();
    Ok(vec![Some(c.op("Neg", &[&dy]))])
}

fn pow(c: &mut GradCtx) -> Out {
    if c.needs(1) {
        return Err(c.err("Pow is differentiated for a constant exponent only; the exponent here depends on a parameter"));
    }
    let (dy, x, e) = (c.dy0(), c.x(0), c.x(1));
    // d x^e = e * x^(e-1); the exponent may have another type than x.
    let dt = c.dtype(&x);
    let e = if c.dtype(&e) != dt {
        c.op_a("Cast", &[&e], vec![crate::proto::attr_int("to", dt as i64)])
    } else {
        e
    };
    let one = c.scalar(&x, 1.0);
    let em1 = c.op("Sub", &[&e, &one]);
    let p = c.op("Pow", &[&x, &em1]);
    let f = c.op("Mul", &[&e, &p]);
    let g = c.op("Mul", &[&dy, &f]);
    Ok(vec![to_input(c, &g, 0)?, None])
}

fn sqrt(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let half = c.scalar(&y, 0.5);
    let h = c.op("Mul", &[&dy, &half]);
    Ok(vec![Some(c.op("Div", &[&h, &y]))])
}

fn exp(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    Ok(vec![Some(c.op("Mul", &[&dy, &y]))])
}

fn log(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    Ok(vec![Some(c.op("Div", &[&dy, &x]))])
}

fn abs(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let s = c.op("Sign", &[&x]);
    Ok(vec![Some(c.op("Mul", &[&dy, &s]))])
}

fn reciprocal(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let y2 = c.op("Mul", &[&y, &y]);
    let m = c.op("Mul", &[&dy, &y2]);
    Ok(vec![Some(c.op("Neg", &[&m]))])
}

fn max_min(c: &mut GradCtx) -> Out {
    if c.node.input.len() != 2 {
        return Err(c.err("Max/Min are differentiated with two inputs"));
    }
    let (dy, a, y) = (c.dy0(), c.x(0), c.y(0));
    // The first input wins where it equals the result.
    let first = c.op("Equal", &[&a, &y]);
    let zero = c.scalar(&y, 0.0);
    let ga = c.op("Where", &[&first, &dy, &zero]);
    let gb = c.op("Where", &[&first, &zero, &dy]);
    Ok(vec![to_input(c, &ga, 0)?, to_input(c, &gb, 1)?])
}
