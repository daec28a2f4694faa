//! Activations: Relu, LeakyRelu, Sigmoid, Tanh, Erf, Gelu (opset 20, exact and tanh
//! approximation), HardSigmoid and HardSwish (MobileNetV3), Softplus, Elu, Clip (opset 11+ min/max inputs), Softmax and LogSoftmax (opset 13+:
//! along one axis).
//! Softmax: dZ = Y·(dY − Σ dY·Y). LogSoftmax: dZ = dY − exp(Y)·Σ dY.

use std::f64::consts::PI;

use crate::autodiff::{GradCtx, Registry};
use crate::error::Result;

type Out = Result<Vec<Option<String>>>;

pub fn register(r: &mut Registry) {
    r.add("Relu", relu);
    r.add("LeakyRelu", leaky_relu);
    r.add("Sigmoid", sigmoid);
    r.add("Tanh", tanh);
    r.add("Erf", erf);
    r.add("Gelu", gelu);
    r.add("Clip", clip);
    r.add("HardSigmoid", hard_sigmoid);
    r.add("HardSwish", hard_swish);
    r.add("Softplus", softplus);
    r.add("Elu", elu);
    r.add("Softmax", softmax);
    r.add("LogSoftmax", log_softmax);
}

fn relu(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let zero = c.scalar(&y, 0.0);
    let pos = c.op("Greater", &[&y, &zero]);
    Ok(vec![Some(c.op("Where", &[&pos, &dy, &zero]))])
}

fn leaky_relu(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let alpha = c.attr_f("alpha", 0.01) as f64;
    let zero = c.scalar(&x, 0.0);
    let a = c.scalar(&x, alpha);
    let pos = c.op("Greater", &[&x, &zero]);
    let neg = c.op("Mul", &[&dy, &a]);
    Ok(vec![Some(c.op("Where", &[&pos, &dy, &neg]))])
}

fn sigmoid(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let one = c.scalar(&y, 1.0);
    let om = c.op("Sub", &[&one, &y]);
    let d = c.op("Mul", &[&y, &om]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn tanh(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let one = c.scalar(&y, 1.0);
    let y2 = c.op("Mul", &[&y, &y]);
    let d = c.op("Sub", &[&one, &y2]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn erf(c: &mut GradCtx) -> Out {
    // d erf(x) = 2/√π · exp(−x²)
    let (dy, x) = (c.dy0(), c.x(0));
    let x2 = c.op("Mul", &[&x, &x]);
    let nx2 = c.op("Neg", &[&x2]);
    let e = c.op("Exp", &[&nx2]);
    let k = c.scalar(&x, 2.0 / PI.sqrt());
    let d = c.op("Mul", &[&e, &k]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn gelu(c: &mut GradCtx) -> Out {
    let (dy, x) = (c.dy0(), c.x(0));
    let approx = c.attr_s("approximate").unwrap_or_else(|| "none".into());
    let half = c.scalar(&x, 0.5);
    let one = c.scalar(&x, 1.0);
    let d = if approx == "tanh" {
        // y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
        // dy/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)
        let k = c.scalar(&x, (2.0 / PI).sqrt());
        let a = c.scalar(&x, 0.044715);
        let a3 = c.scalar(&x, 3.0 * 0.044715);
        let x2 = c.op("Mul", &[&x, &x]);
        let x3 = c.op("Mul", &[&x2, &x]);
        let ax3 = c.op("Mul", &[&x3, &a]);
        let inner = c.op("Add", &[&x, &ax3]);
        let u = c.op("Mul", &[&inner, &k]);
        let t = c.op("Tanh", &[&u]);
        let onept = c.op("Add", &[&one, &t]);
        let left = c.op("Mul", &[&onept, &half]);
        let t2 = c.op("Mul", &[&t, &t]);
        let sech2 = c.op("Sub", &[&one, &t2]);
        let a3x2 = c.op("Mul", &[&x2, &a3]);
        let du = c.op("Add", &[&one, &a3x2]);
        let du = c.op("Mul", &[&du, &k]);
        let hx = c.op("Mul", &[&x, &half]);
        let r = c.op("Mul", &[&hx, &sech2]);
        let right = c.op("Mul", &[&r, &du]);
        c.op("Add", &[&left, &right])
    } else {
        // dy/dx = Φ(x) + x·φ(x)
        let s2 = c.scalar(&x, std::f64::consts::FRAC_1_SQRT_2);
        let xs = c.op("Mul", &[&x, &s2]);
        let e = c.op("Erf", &[&xs]);
        let onepe = c.op("Add", &[&one, &e]);
        let cdf = c.op("Mul", &[&onepe, &half]);
        let x2 = c.op("Mul", &[&x, &x]);
        let hx2 = c.op("Mul", &[&x2, &half]);
        let nh = c.op("Neg", &[&hx2]);
        let ex = c.op("Exp", &[&nh]);
        let k = c.scalar(&x, 1.0 / (2.0 * PI).sqrt());
        let pdf = c.op("Mul", &[&ex, &k]);
        let xpdf = c.op("Mul", &[&x, &pdf]);
        c.op("Add", &[&cdf, &xpdf])
    };
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn clip(c: &mut GradCtx) -> Out {
    // Gradient passes where min ≤ x ≤ max (as PyTorch's clamp does).
    let (dy, x) = (c.dy0(), c.x(0));
    let mut mask: Option<String> = None;
    if c.has_x(1) {
        let lo = c.x(1);
        mask = Some(c.op("GreaterOrEqual", &[&x, &lo]));
    }
    if c.has_x(2) {
        let hi = c.x(2);
        let m = c.op("LessOrEqual", &[&x, &hi]);
        mask = Some(match mask {
            Some(p) => c.op("And", &[&p, &m]),
            None => m,
        });
    }
    let dx = match mask {
        Some(m) => {
            let zero = c.scalar(&x, 0.0);
            c.op("Where", &[&m, &dy, &zero])
        }
        None => dy,
    };
    Ok(vec![Some(dx), None, None])
}

fn softmax(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let axis = c.attr_i("axis", -1);
    let p = c.op("Mul", &[&dy, &y]);
    let s = c.reduce_sum(&p, &[axis], true);
    let d = c.op("Sub", &[&dy, &s]);
    Ok(vec![Some(c.op("Mul", &[&y, &d]))])
}

fn log_softmax(c: &mut GradCtx) -> Out {
    let (dy, y) = (c.dy0(), c.y(0));
    let axis = c.attr_i("axis", -1);
    let s = c.reduce_sum(&dy, &[axis], true);
    let e = c.op("Exp", &[&y]);
    let m = c.op("Mul", &[&e, &s]);
    Ok(vec![Some(c.op("Sub", &[&dy, &m]))])
}

/// Mask (as the input's type) of 0 < αx + β < 1, the linear part of HardSigmoid.
fn hard_linear(c: &mut GradCtx, x: &str, alpha: f64, beta: f64) -> String {
    let a = c.scalar(x, alpha);
    let b = c.scalar(x, beta);
    let ax = c.op("Mul", &[x, &a]);
    let z = c.op("Add", &[&ax, &b]);
    let zero = c.scalar(x, 0.0);
    let one = c.scalar(x, 1.0);
    let gt = c.op("Greater", &[&z, &zero]);
    let lt = c.op("Less", &[&z, &one]);
    let m = c.op("And", &[&gt, &lt]);
    let dt = c.dtype(x);
    c.op_a("Cast", &[&m], vec![crate::proto::attr_int("to", dt as i64)])
}

fn hard_sigmoid(c: &mut GradCtx) -> Out {
    // y = max(0, min(1, αx + β)); dy/dx = α on the linear part.
    let (dy, x) = (c.dy0(), c.x(0));
    let (alpha, beta) = (c.attr_f("alpha", 0.2) as f64, c.attr_f("beta", 0.5) as f64);
    let m = hard_linear(c, &x, alpha, beta);
    let a = c.scalar(&x, alpha);
    let d = c.op("Mul", &[&m, &a]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn hard_swish(c: &mut GradCtx) -> Out {
    // y = x·HardSigmoid(x) with α = 1/6, β = 0.5; dy/dx = hs(x) + x·α·[linear part].
    let (dy, x) = (c.dy0(), c.x(0));
    let (alpha, beta) = (1.0 / 6.0, 0.5);
    let hs = c.op_a(
        "HardSigmoid",
        &[&x],
        vec![
            crate::proto::attr_float("alpha", alpha as f32),
            crate::proto::attr_float("beta", beta as f32),
        ],
    );
    let m = hard_linear(c, &x, alpha, beta);
    let a = c.scalar(&x, alpha);
    let xm = c.op("Mul", &[&x, &m]);
    let xma = c.op("Mul", &[&xm, &a]);
    let d = c.op("Add", &[&hs, &xma]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}

fn softplus(c: &mut GradCtx) -> Out {
    // d ln(1 + eˣ) = sigmoid(x)
    let (dy, x) = (c.dy0(), c.x(0));
    let s = c.op("Sigmoid", &[&x]);
    Ok(vec![Some(c.op("Mul", &[&dy, &s]))])
}

fn elu(c: &mut GradCtx) -> Out {
    // x > 0: 1; else α·eˣ = y + α.
    let (dy, x, y) = (c.dy0(), c.x(0), c.y(0));
    let alpha = c.attr_f("alpha", 1.0) as f64;
    let a = c.scalar(&x, alpha);
    let zero = c.scalar(&x, 0.0);
    let one = c.scalar(&x, 1.0);
    let pos = c.op("Greater", &[&x, &zero]);
    let neg = c.op("Add", &[&y, &a]);
    let d = c.op("Where", &[&pos, &one, &neg]);
    Ok(vec![Some(c.op("Mul", &[&dy, &d]))])
}
