//! Every gradient rule against central finite differences through ONNX Runtime (issue
//! #3): random shapes with broadcasting, f64 wherever ORT has an f64 kernel (f32 for Conv,
//! AveragePool and GlobalAveragePool (their gradients use ConvTranspose), Erf and Gelu). Each test is a [`Suite`]: all
//! of its cases run, every gradient model goes through the onnx checker's full check,
//! and none may use a com.microsoft op. See tests/common/gradcheck.rs.

mod common;
#[path = "common/gradcheck.rs"]
mod gradcheck;

use gradcheck::{Case, Gen, Input, Suite, case, const32, const64, ints, ints_nd, konst};
use regraft::proto::{
    DataType, attr_float, attr_int, attr_ints, attr_string, make_node, scalar, tensor,
};

fn f64c(v: f64) -> Input {
    konst(scalar::<f64>("", v))
}

fn f32c(v: f32) -> Input {
    konst(scalar::<f32>("", v))
}

fn boolc(v: bool) -> Input {
    konst(scalar::<bool>("", v))
}

// ---------------------------------------------------------------------------------------
// Elementwise arithmetic

#[test]
fn add_sub_mul_div_with_broadcasting() {
    let mut g = Gen::new(1);
    let mut s = Suite::new("binary");
    let shapes: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[2, 1, 4], &[3, 1]),
        (&[3, 1], &[1, 4]),
        (&[2, 3], &[]),
        (&[], &[2, 3]),
        (&[], &[]),
        (&[2, 3, 4], &[1, 3, 1]),
    ];
    for op in ["Add", "Sub", "Mul", "Div"] {
        for (a, b) in shapes {
            let label = format!("{op}_{a:?}_{b:?}");
            // Divisors stay away from zero.
            let rhs = if op == "Div" {
                g.f64_away(b, 0.5)
            } else {
                g.f64(b)
            };
            s.add(case(&label, op, 18).input(g.f64(a)).input(rhs));
        }
    }
    // Only one side differentiable (the other a constant).
    s.add(
        case("Mul_const_rhs", "Mul", 18)
            .input(g.f64(&[3, 4]))
            .input(const64(&g.a64(&[4]))),
    );
    s.add(
        case("Div_const_lhs", "Div", 18)
            .input(const64(&g.a64(&[3, 4])))
            .input(g.f64_away(&[3, 1], 0.5)),
    );
    s.add(
        case("Sub_const_lhs", "Sub", 13)
            .input(const64(&g.a64(&[4])))
            .input(g.f64(&[2, 4])),
    );
    s.run();
}

#[test]
fn unary_arithmetic() {
    let mut g = Gen::new(2);
    let mut s = Suite::new("unary");
    s.add(case("Neg", "Neg", 18).input(g.f64(&[3, 4])));
    s.add(case("Sqrt", "Sqrt", 18).input(g.f64_in(&[3, 4], 0.2, 2.0)));
    s.add(case("Exp", "Exp", 18).input(g.f64(&[2, 3, 2])));
    s.add(case("Log", "Log", 18).input(g.f64_in(&[5], 0.2, 2.0)));
    s.add(case("Abs", "Abs", 18).input(g.f64_away(&[3, 4], 0.1)));
    s.add(case("Reciprocal", "Reciprocal", 18).input(g.f64_away(&[3, 4], 0.3)));
    s.add(case("Neg_scalar", "Neg", 13).input(g.f64(&[])));
    s.run();
}

#[test]
fn pow_with_constant_exponent() {
    let mut g = Gen::new(3);
    let mut s = Suite::new("pow");
    s.add(
        case("Pow_scalar3", "Pow", 18)
            .input(g.f64(&[3, 4]))
            .input(f64c(3.0)),
    );
    s.add(
        case("Pow_scalar2.5", "Pow", 18)
            .input(g.f64_in(&[3, 4], 0.2, 2.0))
            .input(f64c(2.5)),
    );
    // The exponent's type differs from the base's (Pow allows it).
    s.add(
        case("Pow_f32_exponent", "Pow", 18)
            .input(g.f64_in(&[2, 3], 0.2, 2.0))
            .input(f32c(-1.5)),
    );
    s.add(
        case("Pow_int_exponent", "Pow", 18)
            .input(g.f64(&[2, 3]))
            .input(konst(scalar::<i64>("", 2))),
    );
    // A tensor exponent broadcast along the last axis.
    s.add(
        case("Pow_tensor_exponent", "Pow", 18)
            .input(g.f64_in(&[3, 4], 0.2, 2.0))
            .input(const64(&g.range64(&[4], 0.5, 3.0))),
    );
    s.run();
}

#[test]
fn pow_with_a_differentiable_exponent_is_an_error() {
    let mut g = Gen::new(4);
    let c = case("Pow_diff_exponent", "Pow", 18)
        .input(g.f64_in(&[3], 0.5, 1.5))
        .input(g.f64(&[3]));
    let e = c.run().unwrap_err();
    assert!(e.contains("Pow") && e.contains("constant exponent"), "{e}");
}

#[test]
fn sum_variadic() {
    let mut g = Gen::new(5);
    let mut s = Suite::new("sum");
    s.add(case("Sum_1", "Sum", 13).input(g.f64(&[3, 4])));
    s.add(
        case("Sum_2", "Sum", 13)
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[3, 4])),
    );
    s.add(
        case("Sum_3_broadcast", "Sum", 13)
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64(&[4]))
            .input(g.f64(&[3, 1])),
    );
    s.add(
        case("Sum_4_mixed", "Sum", 18)
            .input(g.f64(&[2, 1]))
            .input(const64(&g.a64(&[1, 3])))
            .input(g.f64(&[]))
            .input(g.f64(&[2, 3])),
    );
    s.run();
}

// ---------------------------------------------------------------------------------------
// Activations

#[test]
fn pointwise_activations() {
    let mut g = Gen::new(6);
    let mut s = Suite::new("activations");
    s.add(case("Relu", "Relu", 18).input(g.f64_away(&[3, 4], 0.05)));
    s.add(case("Sigmoid", "Sigmoid", 18).input(g.f64_in(&[3, 4], -3.0, 3.0)));
    s.add(case("Tanh", "Tanh", 18).input(g.f64_in(&[3, 4], -2.0, 2.0)));
    s.add(
        case("LeakyRelu", "LeakyRelu", 18)
            .attr(attr_float("alpha", 0.2))
            .input(g.f64_away(&[3, 4], 0.05)),
    );
    s.add(case("LeakyRelu_default_alpha", "LeakyRelu", 16).input(g.f64_away(&[2, 5], 0.05)));
    s.add(case("LeakyRelu_f32", "LeakyRelu", 16).input(g.f32_away(&[2, 5], 0.05)));
    // ORT's CPU Erf (which Gelu expands to) is float32 only.
    s.add(case("Erf", "Erf", 18).input(g.f32_in(&[3, 4], -2.0, 2.0)));
    for approx in ["none", "tanh"] {
        s.add(
            case(&format!("Gelu_{approx}"), "Gelu", 20)
                .attr(attr_string("approximate", approx))
                .input(g.f32_in(&[3, 4], -3.0, 3.0)),
        );
    }
    s.add(case("Gelu_default", "Gelu", 20).input(g.f32_in(&[2, 3], -3.0, 3.0)));
    // HardSigmoid/HardSwish are piecewise: stay off the kinks at αx + β ∈ {0, 1}.
    s.add(
        case("HardSigmoid", "HardSigmoid", 18)
            .attr(attr_float("alpha", 0.3))
            .attr(attr_float("beta", 0.4))
            .input(g.f64_in(&[3, 4], -1.2, 1.8)),
    );
    s.add(case("HardSwish", "HardSwish", 18).input(g.f64_in(&[3, 4], -2.9, 2.9)));
    s.add(case("HardSwish_outer", "HardSwish", 18).input(g.f64_in(&[2, 3], 3.1, 5.0)));
    s.add(case("Softplus", "Softplus", 18).input(g.f64_in(&[3, 4], -3.0, 3.0)));
    s.add(
        case("Elu", "Elu", 18)
            .attr(attr_float("alpha", 0.7))
            .input(g.f64_away(&[3, 4], 0.05)),
    );
    s.run();
}

#[test]
fn elementwise_max_and_min_with_broadcasting() {
    let mut g = Gen::new(61);
    let mut s = Suite::new("max-min");
    // b = a ± 0.3 elementwise (random sign), so each side wins somewhere and finite
    // differences never cross a tie.
    let pair = |g: &mut Gen, shape: &[usize]| {
        let a = g.a64(shape);
        let signs = g.bools(a.len(), 0.5);
        let mut b = a.clone();
        for (v, s) in b.iter_mut().zip(signs) {
            *v += if s { 0.3 } else { -0.3 };
        }
        (
            Input::Diff(gradcheck::Val::F64(a)),
            Input::Diff(gradcheck::Val::F64(b)),
        )
    };
    for op in ["Max", "Min"] {
        let (a, b) = pair(&mut g, &[3, 4]);
        s.add(case(op, op, 18).input(a).input(b));
        // Broadcast: b [3] against a [2, 3], with rows of a kept 0.3 away from b.
        let (a0, b0) = pair(&mut g, &[3]);
        let (Input::Diff(gradcheck::Val::F64(a0)), Input::Diff(gradcheck::Val::F64(b0))) = (a0, b0)
        else {
            unreachable!()
        };
        let a2 = ndarray::stack(ndarray::Axis(0), &[a0.view(), (&a0 * 1.0).view()])
            .unwrap()
            .into_dyn();
        s.add(
            case(&format!("{op}_broadcast"), op, 18)
                .input(Input::Diff(gradcheck::Val::F64(a2)))
                .input(Input::Diff(gradcheck::Val::F64(b0))),
        );
    }
    s.run();
}

#[test]
fn clip_with_min_and_max() {
    let mut g = Gen::new(7);
    let mut s = Suite::new("clip");
    // Values stay 0.05 away from the bounds ±0.5 (finite differences cannot cross them).
    let x = |g: &mut Gen| {
        let a = g.away64(&[4, 5], 0.05);
        Input::Diff(gradcheck::Val::F64(a.mapv(|v| {
            if v.abs() > 0.45 && v.abs() < 0.55 {
                v * 1.5
            } else {
                v
            }
        })))
    };
    s.add(
        case("Clip_min_max", "Clip", 18)
            .input(x(&mut g))
            .input(f64c(-0.5))
            .input(f64c(0.5)),
    );
    s.add(
        case("Clip_min", "Clip", 18)
            .input(x(&mut g))
            .input(f64c(-0.5)),
    );
    s.add(
        case("Clip_max", "Clip", 18)
            .input(x(&mut g))
            .input(Input::Absent)
            .input(f64c(0.5)),
    );
    s.add(case("Clip_none", "Clip", 13).input(x(&mut g)));
    s.run();
}

#[test]
fn softmax_and_log_softmax_on_each_axis() {
    let mut g = Gen::new(8);
    let mut s = Suite::new("softmax");
    for op in ["Softmax", "LogSoftmax"] {
        for axis in [0, 1, 2, -1, -2] {
            s.add(
                case(&format!("{op}_axis{axis}"), op, 18)
                    .attr(attr_int("axis", axis))
                    .input(g.f64_in(&[2, 3, 4], -2.0, 2.0)),
            );
        }
        s.add(case(&format!("{op}_default_axis"), op, 13).input(g.f64(&[3, 5])));
    }
    s.run();
}

// ---------------------------------------------------------------------------------------
// Linear algebra

#[test]
fn matmul_shapes() {
    let mut g = Gen::new(9);
    let mut s = Suite::new("matmul");
    let shapes: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 3, 4, 5], &[5, 6]),
        (&[5, 6], &[2, 3, 6, 4]),
        (&[4], &[4, 3]),
        (&[2, 3, 4], &[4]),
        (&[4], &[2, 4, 3]),
        (&[4], &[4]),
        (&[2, 1, 3, 4], &[5, 4, 6]),
        (&[1, 3, 4], &[2, 4, 2]),
    ];
    for (a, b) in shapes {
        s.add(
            case(&format!("MatMul_{a:?}_{b:?}"), "MatMul", 18)
                .input(g.f64(a))
                .input(g.f64(b)),
        );
    }
    s.add(
        case("MatMul_const_b", "MatMul", 13)
            .input(g.f64(&[2, 3, 4]))
            .input(const64(&g.a64(&[4, 2]))),
    );
    s.add(
        case("MatMul_const_a", "MatMul", 13)
            .input(const64(&g.a64(&[3, 4])))
            .input(g.f64(&[2, 4, 2])),
    );
    s.run();
}

#[test]
fn gemm_transposes_alpha_beta_and_c_shapes() {
    let mut g = Gen::new(10);
    let mut s = Suite::new("gemm");
    let (m, k, n) = (3usize, 4usize, 5usize);
    for ta in [0, 1] {
        for tb in [0, 1] {
            let a = if ta == 1 { [k, m] } else { [m, k] };
            let b = if tb == 1 { [n, k] } else { [k, n] };
            let cs: &[(&str, &[usize])] = &[
                ("N", &[n]),
                ("MxN", &[m, n]),
                ("scalar", &[]),
                ("1xN", &[1, n]),
                ("Mx1", &[m, 1]),
            ];
            for (cname, cshape) in cs {
                s.add(
                    case(&format!("Gemm_tA{ta}_tB{tb}_C{cname}"), "Gemm", 13)
                        .attr(attr_int("transA", ta))
                        .attr(attr_int("transB", tb))
                        .attr(attr_float("alpha", 0.7))
                        .attr(attr_float("beta", -1.3))
                        .input(g.f64(&a))
                        .input(g.f64(&b))
                        .input(g.f64(cshape)),
                );
            }
            s.add(
                case(&format!("Gemm_tA{ta}_tB{tb}_noC"), "Gemm", 13)
                    .attr(attr_int("transA", ta))
                    .attr(attr_int("transB", tb))
                    .input(g.f64(&a))
                    .input(g.f64(&b)),
            );
        }
    }
    s.add(
        case("Gemm_defaults", "Gemm", 13)
            .input(g.f64(&[2, 3]))
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[4])),
    );
    s.add(
        case("Gemm_const_weight", "Gemm", 13)
            .attr(attr_int("transB", 1))
            .input(g.f64(&[2, 3]))
            .input(const64(&g.a64(&[4, 3])))
            .input(g.f64(&[4])),
    );
    s.run();
}

// ---------------------------------------------------------------------------------------
// Convolution and pooling (ORT's Conv/ConvTranspose kernels are float32 only)

fn conv(label: &str, x: &[usize], w: &[usize], bias: bool, g: &mut Gen) -> Case {
    let mut c = case(label, "Conv", 18).input(g.f32(x)).input(g.f32(w));
    if bias {
        c = c.input(g.f32(&[w[0]]));
    }
    c
}

#[test]
fn conv_1d_and_2d() {
    let mut g = Gen::new(11);
    let mut s = Suite::new("conv");
    s.add(conv("Conv1d_basic", &[2, 3, 9], &[4, 3, 3], true, &mut g));
    s.add(
        conv("Conv1d_stride2_pads", &[2, 3, 9], &[4, 3, 3], true, &mut g)
            .attr(attr_ints("strides", &[2]))
            .attr(attr_ints("pads", &[1, 0])),
    );
    s.add(
        conv("Conv1d_dilation", &[1, 2, 10], &[3, 2, 3], false, &mut g)
            .attr(attr_ints("dilations", &[2])),
    );
    s.add(conv(
        "Conv2d_basic",
        &[2, 3, 6, 5],
        &[4, 3, 3, 3],
        true,
        &mut g,
    ));
    s.add(
        conv(
            "Conv2d_strides_asym_pads",
            &[2, 3, 7, 6],
            &[4, 3, 3, 2],
            true,
            &mut g,
        )
        .attr(attr_ints("strides", &[2, 1]))
        .attr(attr_ints("pads", &[1, 0, 0, 1])),
    );
    s.add(
        conv(
            "Conv2d_same_upper_stride2",
            &[1, 2, 7, 6],
            &[3, 2, 3, 3],
            true,
            &mut g,
        )
        .attr(attr_string("auto_pad", "SAME_UPPER"))
        .attr(attr_ints("strides", &[2, 2])),
    );
    s.add(
        conv(
            "Conv2d_same_lower",
            &[1, 2, 6, 5],
            &[3, 2, 2, 3],
            false,
            &mut g,
        )
        .attr(attr_string("auto_pad", "SAME_LOWER")),
    );
    s.add(
        conv(
            "Conv2d_valid_stride",
            &[2, 2, 7, 7],
            &[2, 2, 3, 3],
            true,
            &mut g,
        )
        .attr(attr_string("auto_pad", "VALID"))
        .attr(attr_ints("strides", &[2, 3])),
    );
    s.add(
        conv(
            "Conv2d_dilations",
            &[1, 2, 8, 7],
            &[3, 2, 3, 2],
            true,
            &mut g,
        )
        .attr(attr_ints("dilations", &[2, 3]))
        .attr(attr_ints("pads", &[1, 1, 2, 0])),
    );
    s.add(
        conv("Conv2d_groups2", &[2, 4, 5, 5], &[6, 2, 3, 3], true, &mut g)
            .attr(attr_int("group", 2)),
    );
    s.add(
        conv(
            "Conv2d_groups2_strided",
            &[2, 4, 7, 6],
            &[4, 2, 3, 3],
            true,
            &mut g,
        )
        .attr(attr_int("group", 2))
        .attr(attr_ints("strides", &[2, 2]))
        .attr(attr_ints("pads", &[1, 1, 1, 1])),
    );
    s.add(
        conv(
            "Conv2d_depthwise",
            &[2, 3, 6, 6],
            &[3, 1, 3, 3],
            true,
            &mut g,
        )
        .attr(attr_int("group", 3)),
    );
    // Sizes that are not a multiple of the stride: the last rows/columns are never read.
    s.add(
        conv(
            "Conv2d_stride3_remainder",
            &[1, 2, 8, 9],
            &[2, 2, 3, 2],
            true,
            &mut g,
        )
        .attr(attr_ints("strides", &[3, 2])),
    );
    s.add(
        conv(
            "Conv2d_kernel_shape_attr",
            &[1, 2, 5, 5],
            &[2, 2, 2, 2],
            false,
            &mut g,
        )
        .attr(attr_ints("kernel_shape", &[2, 2]))
        .attr(attr_ints("strides", &[2, 2])),
    );
    // A constant weight: only dX (and dB).
    s.add(
        case("Conv2d_const_weight", "Conv", 18)
            .input(g.f32(&[1, 2, 5, 5]))
            .input(const32(&g.a64(&[3, 2, 3, 3])))
            .input(g.f32(&[3])),
    );
    s.add(
        conv("Conv3d", &[1, 2, 4, 5, 4], &[2, 2, 2, 3, 2], true, &mut g)
            .attr(attr_ints("strides", &[1, 2, 1])),
    );
    s.run();
}

#[test]
fn max_pool() {
    let mut g = Gen::new(12);
    let mut s = Suite::new("maxpool");
    // Distinct values: the maxima do not change under the finite-difference step.
    s.add(
        case("MaxPool2d_overlapping", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_ints("strides", &[2, 2]))
            .input(g.f64_distinct(&[2, 2, 7, 7])),
    );
    s.add(
        case("MaxPool2d_pads", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_ints("pads", &[1, 1, 1, 1]))
            .input(g.f64_distinct(&[1, 3, 6, 6])),
    );
    s.add(
        case("MaxPool2d_asym_pads_with_indices", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[2, 3]))
            .attr(attr_ints("pads", &[0, 1, 1, 0]))
            .outputs(2)
            .input(g.f64_distinct(&[1, 2, 5, 6])),
    );
    s.add(
        case("MaxPool2d_2x2", "MaxPool", 13)
            .attr(attr_ints("kernel_shape", &[2, 2]))
            .attr(attr_ints("strides", &[2, 2]))
            .input(g.f64_distinct(&[2, 3, 4, 6])),
    );
    s.add(
        case("MaxPool1d_dilated", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[2]))
            .attr(attr_ints("dilations", &[2]))
            .input(g.f64_distinct(&[2, 2, 9])),
    );
    s.add(
        case("MaxPool2d_f32", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_ints("strides", &[1, 1]))
            .input(g.f32_distinct(&[1, 2, 5, 5]))
            .eps(1e-3),
    );
    s.run();
}

#[test]
fn average_pool_and_global_average_pool() {
    let mut g = Gen::new(13);
    let mut s = Suite::new("avgpool");
    for cip in [0, 1] {
        s.add(
            case(&format!("AveragePool2d_pads_cip{cip}"), "AveragePool", 18)
                .attr(attr_ints("kernel_shape", &[3, 3]))
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .attr(attr_int("count_include_pad", cip))
                .input(g.f32(&[2, 3, 7, 6])),
        );
        s.add(
            case(
                &format!("AveragePool2d_asym_pads_cip{cip}"),
                "AveragePool",
                18,
            )
            .attr(attr_ints("kernel_shape", &[2, 3]))
            .attr(attr_ints("pads", &[0, 2, 1, 0]))
            .attr(attr_int("count_include_pad", cip))
            .input(g.f32(&[1, 2, 5, 5])),
        );
        s.add(
            case(&format!("AveragePool1d_cip{cip}"), "AveragePool", 18)
                .attr(attr_ints("kernel_shape", &[3]))
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1]))
                .attr(attr_int("count_include_pad", cip))
                .input(g.f32(&[2, 2, 8])),
        );
    }
    s.add(
        case("AveragePool2d_nopads", "AveragePool", 13)
            .attr(attr_ints("kernel_shape", &[2, 2]))
            .attr(attr_ints("strides", &[2, 2]))
            .input(g.f32(&[2, 2, 5, 4])),
    );
    s.add(case("GlobalAveragePool_2d", "GlobalAveragePool", 18).input(g.f32(&[2, 3, 4, 5])));
    s.add(case("GlobalAveragePool_1d", "GlobalAveragePool", 13).input(g.f32(&[2, 3, 7])));
    s.run();
}

// ---------------------------------------------------------------------------------------
// Normalization

#[test]
fn batch_normalization_training_and_inference() {
    let mut g = Gen::new(14);
    let mut s = Suite::new("batchnorm");
    for (label, shape) in [
        ("4d", vec![3, 2, 4, 3]),
        ("3d", vec![4, 3, 5]),
        ("2d", vec![6, 3]),
    ] {
        let c = shape[1];
        let stats = |g: &mut Gen| vec![const64(&g.a64(&[c])), const64(&g.range64(&[c], 0.5, 2.0))];
        s.add(
            case(
                &format!("BatchNorm_train_{label}_running_stats"),
                "BatchNormalization",
                15,
            )
            .attr(attr_int("training_mode", 1))
            .attr(attr_float("momentum", 0.8))
            .attr(attr_float("epsilon", 1e-3))
            .outputs(3)
            .loss_on(&[0])
            .input(g.f64(&shape))
            .input(g.f64_in(&[c], 0.5, 1.5))
            .input(g.f64(&[c]))
            .inputs(stats(&mut g)),
        );
        s.add(
            case(
                &format!("BatchNorm_inference_{label}"),
                "BatchNormalization",
                15,
            )
            .input(g.f64(&shape))
            .input(g.f64_in(&[c], 0.5, 1.5))
            .input(g.f64(&[c]))
            .inputs(stats(&mut g)),
        );
    }
    // Opset 14 and 13 forms (13: training is told by the extra outputs).
    s.add(
        case("BatchNorm_opset14_train", "BatchNormalization", 14)
            .attr(attr_int("training_mode", 1))
            .outputs(3)
            .loss_on(&[0])
            .input(g.f64(&[4, 2, 3]))
            .input(g.f64_in(&[2], 0.5, 1.5))
            .input(g.f64(&[2]))
            .inputs(vec![
                const64(&g.a64(&[2])),
                const64(&g.range64(&[2], 0.5, 2.0)),
            ]),
    );
    s.add(
        case(
            "BatchNorm_opset13_inference_const_scale",
            "BatchNormalization",
            13,
        )
        .input(g.f64(&[4, 2, 3]))
        .input(const64(&g.range64(&[2], 0.5, 1.5)))
        .input(g.f64(&[2]))
        .inputs(vec![
            const64(&g.a64(&[2])),
            const64(&g.range64(&[2], 0.5, 2.0)),
        ]),
    );
    s.run();
}

#[test]
fn layer_normalization() {
    let mut g = Gen::new(15);
    let mut s = Suite::new("layernorm");
    s.add(
        case("LayerNorm_axis-1", "LayerNormalization", 17)
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64_in(&[4], 0.5, 1.5))
            .input(g.f64(&[4])),
    );
    s.add(
        case("LayerNorm_axis1", "LayerNormalization", 17)
            .attr(attr_int("axis", 1))
            .attr(attr_float("epsilon", 1e-3))
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64_in(&[3, 4], 0.5, 1.5))
            .input(g.f64(&[3, 4])),
    );
    s.add(
        case("LayerNorm_axis0_no_bias", "LayerNormalization", 18)
            .attr(attr_int("axis", 0))
            .input(g.f64(&[3, 4]))
            .input(g.f64_in(&[3, 4], 0.5, 1.5)),
    );
    s.add(
        case("LayerNorm_2d_with_stats_outputs", "LayerNormalization", 17)
            .outputs(3)
            .loss_on(&[0])
            .input(g.f64(&[5, 6]))
            .input(g.f64_in(&[6], 0.5, 1.5))
            .input(g.f64(&[6])),
    );
    s.add(
        case("LayerNorm_const_scale_bias", "LayerNormalization", 17)
            .input(g.f64(&[4, 5]))
            .input(const64(&g.range64(&[5], 0.5, 1.5)))
            .input(const64(&g.a64(&[5]))),
    );
    s.run();
}

// ---------------------------------------------------------------------------------------
// Dropout

#[test]
fn dropout_identity_cases() {
    let mut g = Gen::new(16);
    let mut s = Suite::new("dropout");
    s.add(
        case("Dropout_train_ratio0", "Dropout", 13)
            .input(g.f64(&[3, 4]))
            .input(f64c(0.0))
            .input(boolc(true))
            .outputs(2),
    );
    s.add(
        case("Dropout_train_ratio0_no_mask", "Dropout", 18)
            .input(g.f64(&[3, 4]))
            .input(f32c(0.0))
            .input(boolc(true)),
    );
    s.add(case("Dropout_inference", "Dropout", 13).input(g.f64(&[3, 4])));
    s.add(
        case("Dropout_inference_ratio", "Dropout", 18)
            .input(g.f64(&[3, 4]))
            .input(f64c(0.5)),
    );
    s.add(
        case("Dropout_training_false", "Dropout", 18)
            .input(g.f64(&[3, 4]))
            .input(f64c(0.5))
            .input(boolc(false)),
    );
    s.run();
}

/// With a random mask finite differences cannot work: the gradient must equal
/// dY·mask/(1−ratio), with dY = R (the loss's weights) and the mask of the same run.
#[test]
fn dropout_training_gradient_is_dy_times_mask_over_keep() {
    use gradcheck::{Val, new_session, run_outputs};
    use ndarray::ArrayD;
    use ort::value::Tensor;
    for (declare_mask, ratio) in [(true, 0.3f64), (false, 0.6)] {
        let mut g = Gen::new(17);
        let x = g.a64(&[6, 7]);
        let c = case("Dropout_train", "Dropout", 18)
            .input(Input::Diff(Val::F64(x.clone())))
            .input(f64c(ratio))
            .input(boolc(true))
            .outputs(if declare_mask { 2 } else { 1 });
        let probe = c.probe().unwrap();
        let loss = c.loss_model(&probe).unwrap();
        // The mask's name: y1 when declared, else the output regraft adds.
        let mut gr = regraft::ir::Graph::from_model(loss.clone());
        regraft::autodiff::differentiate(&mut gr, "loss", &["x0".into()]).unwrap();
        let mask = gr
            .nodes
            .iter()
            .find(|n| n.op_type() == "Dropout")
            .unwrap()
            .output[1]
            .clone();
        assert!(!mask.is_empty());
        if declare_mask {
            assert_eq!(mask, "y1");
        }
        let (gm, grads) = c.grad_model(&loss, &[&mask]).unwrap();
        assert!(gradcheck::microsoft_ops(&gm).is_empty());
        let mut sess = new_session(&prost::Message::encode_to_vec(&gm)).unwrap();
        let r: ArrayD<f64> = regraft::proto::to_array(
            loss.graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .find(|t| t.name() == "r0")
                .unwrap(),
        )
        .unwrap();
        let mut seen_drop = false;
        for _ in 0..3 {
            let out = run_outputs(
                &mut sess,
                vec![(
                    "x0".to_string(),
                    Tensor::from_array(x.clone()).unwrap().into_dyn(),
                )],
            )
            .unwrap();
            let (dx, m) = (&out[&grads[0]], &out[&mask]);
            let kept = m.iter().filter(|&&v| v != 0.0).count();
            seen_drop |= kept < m.len();
            assert!(kept > 0, "every element dropped");
            for ((d, mv), rv) in dx.iter().zip(m.iter()).zip(r.iter()) {
                let want = rv * mv / (1.0 - ratio);
                assert!(
                    (d - want).abs() <= 1e-12 * (1.0 + want.abs()),
                    "dX {d} vs dY·mask/(1−ratio) {want}"
                );
            }
        }
        assert!(seen_drop, "ratio {ratio}: no element was ever dropped");
        let dir = common::tempdir();
        let p = gradcheck::save(dir.path(), "dropout", &gm);
        assert_eq!(gradcheck::checker_failures(&[p]), None);
    }
}

// ---------------------------------------------------------------------------------------
// Shapes and indexing

#[test]
fn reshaping_ops() {
    let mut g = Gen::new(18);
    let mut s = Suite::new("reshape");
    for axis in [0, 1, 2, -1] {
        s.add(
            case(&format!("Flatten_axis{axis}"), "Flatten", 13)
                .attr(attr_int("axis", axis))
                .input(g.f64(&[2, 3, 4])),
        );
    }
    s.add(case("Flatten_default", "Flatten", 21).input(g.f64(&[2, 3, 2, 2])));
    s.add(
        case("Reshape_minus1", "Reshape", 18)
            .input(g.f64(&[2, 3, 4]))
            .input(ints(&[4, -1])),
    );
    s.add(
        case("Reshape_zero", "Reshape", 18)
            .input(g.f64(&[2, 3, 4]))
            .input(ints(&[0, 2, -1, 1])),
    );
    s.add(
        case("Reshape_to_scalar_shape", "Reshape", 13)
            .input(g.f64(&[1, 1]))
            .input(ints(&[])),
    );
    s.add(
        case("Transpose_perm", "Transpose", 13)
            .attr(attr_ints("perm", &[1, 2, 0]))
            .input(g.f64(&[2, 3, 4])),
    );
    s.add(
        case("Transpose_perm4", "Transpose", 18)
            .attr(attr_ints("perm", &[0, 2, 3, 1]))
            .input(g.f64(&[2, 3, 2, 4])),
    );
    s.add(case("Transpose_default", "Transpose", 13).input(g.f64(&[2, 3, 4])));
    s.add(
        case("Squeeze_axes", "Squeeze", 13)
            .input(g.f64(&[2, 1, 3, 1]))
            .input(ints(&[1, -1])),
    );
    s.add(case("Squeeze_all", "Squeeze", 18).input(g.f64(&[1, 3, 1, 2])));
    s.add(
        case("Unsqueeze", "Unsqueeze", 13)
            .input(g.f64(&[2, 3]))
            .input(ints(&[0, 3])),
    );
    s.add(
        case("Unsqueeze_negative", "Unsqueeze", 18)
            .input(g.f64(&[2, 3]))
            .input(ints(&[-1])),
    );
    s.add(case("Identity", "Identity", 18).input(g.f64(&[2, 3])));
    s.add(case("Identity_scalar", "Identity", 13).input(g.f64(&[])));
    s.run();
}

#[test]
fn concat_and_split() {
    let mut g = Gen::new(19);
    let mut s = Suite::new("concat_split");
    s.add(
        case("Concat_axis1", "Concat", 13)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64(&[2, 1, 4]))
            .input(g.f64(&[2, 2, 4])),
    );
    s.add(
        case("Concat_axis-1", "Concat", 18)
            .attr(attr_int("axis", -1))
            .input(g.f64(&[3, 2]))
            .input(g.f64(&[3, 5])),
    );
    s.add(
        case("Concat_with_const", "Concat", 18)
            .attr(attr_int("axis", 0))
            .input(g.f64(&[2, 3]))
            .input(const64(&g.a64(&[1, 3])))
            .input(g.f64(&[3, 3])),
    );
    s.add(
        case("Split_sizes", "Split", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 5, 3]))
            .input(ints(&[2, 3]))
            .outputs(2),
    );
    s.add(
        case("Split_sizes_some_outputs_used", "Split", 18)
            .attr(attr_int("axis", -1))
            .input(g.f64(&[3, 6]))
            .input(ints(&[1, 2, 3]))
            .outputs(3)
            .loss_on(&[0, 2]),
    );
    s.add(
        case("Split_equal_num_outputs", "Split", 18)
            .attr(attr_int("num_outputs", 3))
            .input(g.f64(&[6, 2]))
            .outputs(3),
    );
    s.add(
        case("Split_equal_opset13", "Split", 13)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 4]))
            .outputs(2)
            .loss_on(&[1]),
    );
    s.run();
}

#[test]
fn slice() {
    let mut g = Gen::new(20);
    let mut s = Suite::new("slice");
    s.add(
        case("Slice_basic", "Slice", 13)
            .input(g.f64(&[5, 6]))
            .input(ints(&[1, 2]))
            .input(ints(&[4, 5])),
    );
    s.add(
        case("Slice_negative_starts_axes_clamped_ends", "Slice", 18)
            .input(g.f64(&[4, 5, 6]))
            .input(ints(&[-3, 1]))
            .input(ints(&[100, -1]))
            .input(ints(&[2, 0])),
    );
    s.add(
        case("Slice_negative_axes_steps1", "Slice", 18)
            .input(g.f64(&[4, 5, 6]))
            .input(ints(&[-100, 2]))
            .input(ints(&[2, i64::MAX]))
            .input(ints(&[-2, -1]))
            .input(ints(&[1, 1])),
    );
    s.add(
        case("Slice_empty_range", "Slice", 18)
            .input(g.f64(&[4, 3]))
            .input(ints(&[3, 0]))
            .input(ints(&[1, 3]))
            .input(ints(&[0, 1]))
            .loss_on(&[0]),
    );
    s.run();
}

#[test]
fn gather_and_gather_elements() {
    let mut g = Gen::new(21);
    let mut s = Suite::new("gather");
    // An embedding: repeated rows must add up.
    s.add(
        case("Gather_axis0_embedding_repeats", "Gather", 18)
            .input(g.f64(&[5, 3]))
            .input(ints_nd(&[2, 4], &[0, 2, 2, 4, 1, 2, 0, 0])),
    );
    s.add(
        case("Gather_axis0_negative", "Gather", 18)
            .input(g.f64(&[5, 3]))
            .input(ints_nd(&[3], &[-1, 0, -1])),
    );
    s.add(
        case("Gather_axis1", "Gather", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[3, 4, 2]))
            .input(ints_nd(&[2, 3], &[0, 3, 3, 1, 0, 3])),
    );
    s.add(
        case("Gather_axis-1_scalar_index", "Gather", 16)
            .attr(attr_int("axis", -1))
            .input(g.f64(&[3, 4]))
            .input(ints_nd(&[], &[2])),
    );
    s.add(
        case("GatherElements_axis1", "GatherElements", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[3, 4]))
            .input(ints_nd(
                &[3, 5],
                &[0, 1, 1, 3, 3, 2, 2, 2, 0, 1, 3, 0, 1, 2, 3],
            )),
    );
    s.add(
        case("GatherElements_axis0_negative", "GatherElements", 18)
            .input(g.f64(&[3, 2]))
            .input(ints_nd(&[2, 2], &[-1, 0, 2, -3])),
    );
    s.run();
}

#[test]
fn expand_where_cast() {
    let mut g = Gen::new(22);
    let mut s = Suite::new("expand_where_cast");
    s.add(
        case("Expand_3x1_to_2x3x4", "Expand", 13)
            .input(g.f64(&[3, 1]))
            .input(ints(&[2, 3, 4])),
    );
    s.add(
        case("Expand_4_to_3x4", "Expand", 18)
            .input(g.f64(&[4]))
            .input(ints(&[3, 1])),
    );
    s.add(
        case("Expand_same_rank_ones", "Expand", 18)
            .input(g.f64(&[2, 1, 3]))
            .input(ints(&[1, 4, 1])),
    );
    let cond = g.bools(12, 0.5);
    s.add(
        case("Where_both", "Where", 18)
            .input(konst(tensor::<bool>("", &[3, 4], &cond)))
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[4])),
    );
    let cond = g.bools(3, 0.5);
    s.add(
        case("Where_broadcast_cond", "Where", 16)
            .input(konst(tensor::<bool>("", &[3, 1], &cond)))
            .input(g.f64(&[]))
            .input(g.f64(&[2, 3, 4])),
    );
    s.add(
        case("Where_one_side", "Where", 16)
            .input(konst(tensor::<bool>(
                "",
                &[2, 2],
                &[true, false, false, true],
            )))
            .input(const64(&g.a64(&[2, 2])))
            .input(g.f64(&[2, 2])),
    );
    s.add(
        case("Cast_f32_to_f64", "Cast", 13)
            .attr(attr_int("to", DataType::Double as i64))
            .input(g.f32(&[3, 4])),
    );
    // The loss sees float32 values: steps far above their rounding.
    s.add(
        case("Cast_f64_to_f32", "Cast", 19)
            .attr(attr_int("to", DataType::Float as i64))
            .input(g.f64(&[3, 4]))
            .eps(1e-2)
            .tol(1e-5, 1e-4),
    );
    s.add(
        case("CastLike_f32_to_f64", "CastLike", 15)
            .input(g.f32(&[3, 4]))
            .input(f64c(0.0)),
    );
    s.add(
        case("CastLike_f64_to_f64", "CastLike", 19)
            .input(g.f64(&[2, 3]))
            .input(const64(&g.a64(&[5]))),
    );
    s.run();
}

// ---------------------------------------------------------------------------------------
// Reductions

#[test]
fn reductions() {
    let mut g = Gen::new(23);
    let mut s = Suite::new("reduce");
    let x = [2usize, 3, 4];
    for keep in [0, 1] {
        // ReduceSum: axes as an input since opset 13.
        for (opset, axes) in [
            (13, vec![1]),
            (13, vec![0, 2]),
            (18, vec![-1, 0]),
            (18, vec![0, 1, 2]),
        ] {
            s.add(
                case(
                    &format!("ReduceSum_{opset}_{axes:?}_keep{keep}"),
                    "ReduceSum",
                    opset,
                )
                .attr(attr_int("keepdims", keep))
                .input(g.f64(&x))
                .input(ints(&axes)),
            );
        }
        s.add(
            case(&format!("ReduceSum_all_keep{keep}"), "ReduceSum", 13)
                .attr(attr_int("keepdims", keep))
                .input(g.f64(&x)),
        );
        // ReduceMean and ReduceLogSumExp: attribute before 18, input from 18.
        for op in ["ReduceMean", "ReduceLogSumExp"] {
            for axes in [vec![1], vec![0, 2], vec![-1]] {
                s.add(
                    case(&format!("{op}_13_{axes:?}_keep{keep}"), op, 13)
                        .attr(attr_int("keepdims", keep))
                        .attr(attr_ints("axes", &axes))
                        .input(g.f64(&x)),
                );
                s.add(
                    case(&format!("{op}_18_{axes:?}_keep{keep}"), op, 18)
                        .attr(attr_int("keepdims", keep))
                        .input(g.f64(&x))
                        .input(ints(&axes)),
                );
            }
            s.add(
                case(&format!("{op}_13_all_keep{keep}"), op, 13)
                    .attr(attr_int("keepdims", keep))
                    .input(g.f64(&x)),
            );
            s.add(
                case(&format!("{op}_18_all_keep{keep}"), op, 18)
                    .attr(attr_int("keepdims", keep))
                    .input(g.f64(&x)),
            );
        }
    }
    s.add(
        case("ReduceSum_noop_empty_axes", "ReduceSum", 13)
            .attr(attr_int("noop_with_empty_axes", 1))
            .input(g.f64(&[2, 3])),
    );
    s.add(
        case("ReduceMean_18_noop_empty_axes", "ReduceMean", 18)
            .attr(attr_int("noop_with_empty_axes", 1))
            .input(g.f64(&[2, 3]))
            .input(ints(&[])),
    );
    s.run();
}

// ---------------------------------------------------------------------------------------
// Fused losses

#[test]
fn softmax_cross_entropy_and_nll_losses() {
    let mut g = Gen::new(24);
    let mut s = Suite::new("losses");
    let (n, c) = (6usize, 5usize);
    let labels = g.ints(&[n], 0, c as i64);
    let mut with_ignored = labels.clone();
    with_ignored[1] = 2;
    with_ignored[4] = 2;
    let mut with_neg = labels.clone();
    with_neg[0] = -1;
    let weights = g.range64(&[c], 0.2, 2.0);
    for op in ["SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"] {
        for red in ["mean", "sum", "none"] {
            s.add(
                case(&format!("{op}_{red}"), op, 13)
                    .attr(attr_string("reduction", red))
                    .input(g.f64(&[n, c]))
                    .input(ints_nd(&[n as i64], &labels)),
            );
            s.add(
                case(&format!("{op}_{red}_weights"), op, 13)
                    .attr(attr_string("reduction", red))
                    .input(g.f64(&[n, c]))
                    .input(ints_nd(&[n as i64], &labels))
                    .input(const64(&weights)),
            );
            s.add(
                case(&format!("{op}_{red}_ignore_index"), op, 13)
                    .attr(attr_string("reduction", red))
                    .attr(attr_int("ignore_index", 2))
                    .input(g.f64(&[n, c]))
                    .input(ints_nd(&[n as i64], &with_ignored)),
            );
            s.add(
                case(&format!("{op}_{red}_weights_ignore_index"), op, 13)
                    .attr(attr_string("reduction", red))
                    .attr(attr_int("ignore_index", 2))
                    .input(g.f64(&[n, c]))
                    .input(ints_nd(&[n as i64], &with_ignored))
                    .input(const64(&weights)),
            );
        }
        s.add(
            case(&format!("{op}_default_reduction_negative_ignore"), op, 13)
                .attr(attr_int("ignore_index", -1))
                .input(g.f64(&[n, c]))
                .input(ints_nd(&[n as i64], &with_neg)),
        );
        s.add(
            case(&format!("{op}_f32"), op, 13)
                .input(g.f32(&[n, c]))
                .input(ints_nd(&[n as i64], &labels))
                .tol(1e-3, 1e-2),
        );
    }
    s.run();
}

// ---------------------------------------------------------------------------------------
// What needs no rule, and what has none

/// Shape, Constant and ops off the differentiable path (even ones without a rule, such
/// as Det on a constant) need no gradient rule.
#[test]
fn shape_and_constant_paths_need_no_rule() {
    let mut g = Gen::new(25);
    let c = case("Mul_by_shape_and_det", "Mul", 18)
        .input(g.f64(&[3, 4]))
        .input(Input::Named("k".into()))
        .pre(
            vec![
                make_node("Shape", "shape", &["x0"], &["s"], vec![]),
                make_node(
                    "Gather",
                    "gather",
                    &["s", "one"],
                    &["n"],
                    vec![attr_int("axis", 0)],
                ),
                make_node(
                    "Cast",
                    "cast",
                    &["n"],
                    &["nf"],
                    vec![attr_int("to", DataType::Double as i64)],
                ),
                make_node("Det", "det", &["m"], &["d32"], vec![]),
                make_node(
                    "Cast",
                    "cast_det",
                    &["d32"],
                    &["d"],
                    vec![attr_int("to", DataType::Double as i64)],
                ),
                make_node(
                    "Constant",
                    "constant",
                    &[],
                    &["half"],
                    vec![regraft::proto::attr_tensor("value", scalar::<f64>("", 0.5))],
                ),
                make_node("Mul", "k1", &["nf", "d"], &["kd"], vec![]),
                make_node("Add", "k2", &["kd", "half"], &["k"], vec![]),
            ],
            vec![
                tensor::<i64>("one", &[], &[1]),
                tensor::<f32>("m", &[2, 2], &[2.0, 1.0, 0.5, 3.0]),
            ],
        );
    let mut s = Suite::new("no_rule_needed");
    s.add(c);
    s.run();
}

#[test]
fn an_op_without_a_rule_is_an_error_naming_it() {
    let mut g = Gen::new(26);
    for (op, c) in [
        ("Det", case("Det", "Det", 18).input(g.f64(&[3, 3]))),
        (
            "Einsum",
            case("Einsum", "Einsum", 18)
                .attr(attr_string("equation", "ij,jk->ik"))
                .input(g.f64(&[2, 3]))
                .input(g.f64(&[3, 2])),
        ),
    ] {
        // ORT has no float64 Det: differentiate without running the node.
        let out_shape = if op == "Det" { vec![] } else { vec![2, 2] };
        let loss = c
            .loss_model(&[(ort::value::TensorElementType::Float64, out_shape)])
            .unwrap();
        let e = c.grad_model(&loss, &[]).unwrap_err();
        assert!(
            e.contains(&format!("no gradient rule for op '{op}'")),
            "{e}"
        );
        assert!(e.contains("node 'node'"), "the message names the node: {e}");
        assert!(
            e.contains("supported:") && e.contains("MatMul") && e.contains("Conv"),
            "the message lists the supported ops: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Shapes known only at run time

/// Cases whose rules have a run-time (Shape-based) path besides the static one.
fn shape_sensitive_cases(g: &mut Gen) -> Vec<Case> {
    vec![
        case("Add_3x4_4", "Add", 18)
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[4])),
        case("Mul_2x1x4_3x1", "Mul", 18)
            .input(g.f64(&[2, 1, 4]))
            .input(g.f64(&[3, 1])),
        case("Sub_2x3_scalar", "Sub", 18)
            .input(g.f64(&[2, 3]))
            .input(g.f64(&[])),
        case("Div_4x3_4x1", "Div", 18)
            .input(g.f64(&[4, 3]))
            .input(g.f64_away(&[4, 1], 0.5)),
        case("Sum_3", "Sum", 13)
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64(&[4]))
            .input(g.f64(&[3, 1])),
        case("Where", "Where", 18)
            .input(konst(tensor::<bool>("", &[3, 1], &[true, false, true])))
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[4])),
        case("MatMul_batch_broadcast", "MatMul", 18)
            .input(g.f64(&[2, 3, 4, 5]))
            .input(g.f64(&[5, 6])),
        case("MatMul_both_broadcast", "MatMul", 18)
            .input(g.f64(&[2, 1, 3, 4]))
            .input(g.f64(&[5, 4, 6])),
        case("MatMul_vec_mat", "MatMul", 18)
            .input(g.f64(&[4]))
            .input(g.f64(&[2, 4, 3])),
        case("Gemm_C_N", "Gemm", 13)
            .attr(attr_int("transB", 1))
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[5, 4]))
            .input(g.f64(&[5])),
        case("Gemm_C_Mx1", "Gemm", 13)
            .input(g.f64(&[3, 4]))
            .input(g.f64(&[4, 5]))
            .input(g.f64(&[3, 1])),
        // kernel_shape given: with a symbolic weight shape it is the only source.
        conv("Conv2d_strided", &[2, 3, 7, 6], &[4, 3, 3, 2], true, g)
            .attr(attr_ints("kernel_shape", &[3, 2]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_ints("pads", &[1, 0, 0, 1])),
        conv("Conv2d_groups2", &[2, 4, 5, 5], &[6, 2, 3, 3], true, g)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_int("group", 2)),
        case("MaxPool2d", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_ints("pads", &[1, 1, 1, 1]))
            .input(g.f64_distinct(&[2, 2, 6, 5])),
        case("GlobalAveragePool", "GlobalAveragePool", 18).input(g.f32(&[2, 3, 4, 5])),
        case("BatchNorm_train", "BatchNormalization", 15)
            .attr(attr_int("training_mode", 1))
            .outputs(3)
            .loss_on(&[0])
            .input(g.f64(&[3, 2, 4]))
            .input(g.f64_in(&[2], 0.5, 1.5))
            .input(g.f64(&[2]))
            .inputs(vec![
                const64(&g.a64(&[2])),
                const64(&g.range64(&[2], 0.5, 2.0)),
            ]),
        case("LayerNorm_axis1", "LayerNormalization", 17)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64_in(&[3, 4], 0.5, 1.5))
            .input(g.f64(&[3, 4])),
        case("Softmax_axis1", "Softmax", 13)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 3, 4])),
        case("LogSoftmax", "LogSoftmax", 13).input(g.f64(&[3, 5])),
        case("ReduceSum_keep0", "ReduceSum", 13)
            .attr(attr_int("keepdims", 0))
            .input(g.f64(&[2, 3, 4]))
            .input(ints(&[0, 2])),
        case("ReduceMean_13", "ReduceMean", 13)
            .attr(attr_ints("axes", &[1]))
            .input(g.f64(&[2, 3, 4])),
        case("ReduceMean_18_all", "ReduceMean", 18)
            .attr(attr_int("keepdims", 0))
            .input(g.f64(&[2, 3, 4])),
        case("ReduceLogSumExp_18", "ReduceLogSumExp", 18)
            .attr(attr_int("keepdims", 0))
            .input(g.f64(&[2, 3, 4]))
            .input(ints(&[-1])),
        case("Concat_axis1", "Concat", 13)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 3]))
            .input(g.f64(&[2, 2])),
        case("Split_some_used", "Split", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[2, 6]))
            .input(ints(&[1, 2, 3]))
            .outputs(3)
            .loss_on(&[1]),
        case("Slice_negative", "Slice", 18)
            .input(g.f64(&[4, 5, 6]))
            .input(ints(&[-3, 1]))
            .input(ints(&[100, -1]))
            .input(ints(&[2, 0])),
        case("Gather_axis1", "Gather", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[3, 4]))
            .input(ints_nd(&[2, 2], &[0, 3, 3, 1])),
        case("GatherElements", "GatherElements", 18)
            .attr(attr_int("axis", 1))
            .input(g.f64(&[3, 4]))
            .input(ints_nd(&[3, 2], &[0, 1, 1, 3, 3, 3])),
        case("Expand", "Expand", 13)
            .input(g.f64(&[3, 1]))
            .input(ints(&[2, 3, 4])),
        case("Reshape", "Reshape", 18)
            .input(g.f64(&[2, 3, 4]))
            .input(ints(&[0, -1])),
        case("Flatten", "Flatten", 13)
            .attr(attr_int("axis", 2))
            .input(g.f64(&[2, 3, 4])),
        case("Squeeze", "Squeeze", 13)
            .input(g.f64(&[2, 1, 3]))
            .input(ints(&[1])),
        case("Transpose", "Transpose", 13)
            .attr(attr_ints("perm", &[2, 0, 1]))
            .input(g.f64(&[2, 3, 4])),
        case("SoftmaxCrossEntropyLoss", "SoftmaxCrossEntropyLoss", 13)
            .input(g.f64(&[4, 3]))
            .input(ints_nd(&[4], &[0, 2, 1, 2])),
        case(
            "NegativeLogLikelihoodLoss_sum",
            "NegativeLogLikelihoodLoss",
            13,
        )
        .attr(attr_string("reduction", "sum"))
        .input(g.f64(&[4, 3]))
        .input(ints_nd(&[4], &[0, 2, 1, 2])),
    ]
}

/// A symbolic batch dim, as exported models have: the rules' run-time shape paths.
#[test]
fn symbolic_batch_dim() {
    let mut g = Gen::new(27);
    let mut s = Suite::new("batch_dim");
    for c in shape_sensitive_cases(&mut g) {
        s.add(c.dims(gradcheck::Dims::Batch));
    }
    s.run();
}

/// Every dim symbolic but the broadcast 1s: almost nothing about the shapes is known
/// before the run.
#[test]
fn every_dim_symbolic() {
    let mut g = Gen::new(28);
    let mut s = Suite::new("symbolic");
    for c in shape_sensitive_cases(&mut g) {
        s.add(c.dims(gradcheck::Dims::Symbolic));
    }
    s.run();
}

// ---------------------------------------------------------------------------------------
// More outputs and shared inputs

/// Secondary outputs that are differentiable values: LayerNormalization's Mean and
/// InvStdDev, SoftmaxCrossEntropyLoss's log_prob.
#[test]
fn secondary_float_outputs() {
    let mut g = Gen::new(29);
    let mut s = Suite::new("secondary_outputs");
    // Mean and InvStdDev are float32 (stash_type; float64 is not allowed): steps well
    // above their rounding.
    s.add(
        case("LayerNorm_mean_invstd_used", "LayerNormalization", 17)
            .eps(1e-3)
            .tol(2e-4, 1e-3)
            .outputs(3)
            .input(g.f64(&[4, 5]))
            .input(g.f64_in(&[5], 0.5, 1.5))
            .input(g.f64(&[5])),
    );
    s.add(
        case("LayerNorm_axis1_only_stats_used", "LayerNormalization", 17)
            .eps(1e-3)
            .tol(2e-4, 1e-3)
            .attr(attr_int("axis", 1))
            .outputs(3)
            .loss_on(&[1, 2])
            .input(g.f64(&[2, 3, 4]))
            .input(g.f64_in(&[3, 4], 0.5, 1.5)),
    );
    for red in ["mean", "none"] {
        s.add(
            case(
                &format!("SoftmaxCrossEntropyLoss_{red}_log_prob_used"),
                "SoftmaxCrossEntropyLoss",
                13,
            )
            .attr(attr_string("reduction", red))
            .outputs(2)
            .input(g.f64(&[4, 3]))
            .input(ints_nd(&[4], &[0, 2, 1, 2])),
        );
    }
    s.add(
        case(
            "SoftmaxCrossEntropyLoss_only_log_prob_used",
            "SoftmaxCrossEntropyLoss",
            13,
        )
        .attr(attr_int("ignore_index", 1))
        .outputs(2)
        .loss_on(&[1])
        .input(g.f64(&[4, 3]))
        .input(ints_nd(&[4], &[0, 1, 1, 2])),
    );
    s.run();
}

/// One value feeding several inputs of a node: the contributions are summed.
#[test]
fn repeated_inputs_accumulate() {
    let mut g = Gen::new(30);
    let mut s = Suite::new("repeated_inputs");
    let x0 = || Input::Named("x0".into());
    s.add(case("Mul_x_x", "Mul", 18).input(g.f64(&[3, 4])).input(x0()));
    s.add(case("Add_x_x", "Add", 18).input(g.f64(&[3])).input(x0()));
    s.add(
        case("Sum_x_x_x", "Sum", 13)
            .input(g.f64(&[2, 3]))
            .input(x0())
            .input(x0()),
    );
    s.add(
        case("MatMul_x_x", "MatMul", 13)
            .input(g.f64(&[3, 3]))
            .input(x0()),
    );
    s.add(
        case("Concat_x_x", "Concat", 13)
            .attr(attr_int("axis", 0))
            .input(g.f64(&[2, 3]))
            .input(x0()),
    );
    s.add(
        case("Div_x_x_plus", "Div", 13)
            .input(g.f64_away(&[4], 0.3))
            .input(x0()),
    );
    s.run();
}

#[test]
fn pooling_variants() {
    let mut g = Gen::new(31);
    let mut s = Suite::new("pooling_variants");
    s.add(
        case("MaxPool_ceil_mode", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[2, 2]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_int("ceil_mode", 1))
            .input(g.f64_distinct(&[1, 2, 5, 5])),
    );
    s.add(
        case("MaxPool_same_upper", "MaxPool", 18)
            .attr(attr_ints("kernel_shape", &[3, 3]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_string("auto_pad", "SAME_UPPER"))
            .input(g.f64_distinct(&[1, 2, 5, 6])),
    );
    s.add(
        case("AveragePool_dilations", "AveragePool", 19)
            .attr(attr_ints("kernel_shape", &[2, 2]))
            .attr(attr_ints("dilations", &[2, 1]))
            .attr(attr_ints("pads", &[1, 0, 1, 1]))
            .input(g.f32(&[1, 2, 6, 5])),
    );
    s.add(
        case("AveragePool_valid", "AveragePool", 18)
            .attr(attr_ints("kernel_shape", &[3, 2]))
            .attr(attr_ints("strides", &[2, 2]))
            .attr(attr_string("auto_pad", "VALID"))
            .input(g.f32(&[2, 2, 7, 6])),
    );
    s.run();
}

/// Documented limits fail with a message naming the node and the reason, never with a
/// wrong gradient.
#[test]
fn unsupported_forms_are_errors() {
    let mut g = Gen::new(32);
    let cases = [
        (
            case("Slice_step2", "Slice", 18)
                .input(g.f64(&[6]))
                .input(ints(&[0]))
                .input(ints(&[6]))
                .input(ints(&[0]))
                .input(ints(&[2])),
            "step 1 only",
        ),
        (
            case("Gather_opset13", "Gather", 13)
                .input(g.f64(&[4, 2]))
                .input(ints_nd(&[2], &[1, 1])),
            "opset 16",
        ),
        (
            case("GatherElements_opset13", "GatherElements", 13)
                .input(g.f64(&[2, 2]))
                .input(ints_nd(&[2, 2], &[0, 0, 1, 0])),
            "opset 16",
        ),
        (
            case("MaxPool_overlapping_opset13", "MaxPool", 13)
                .attr(attr_ints("kernel_shape", &[3]))
                .input(g.f64_distinct(&[1, 1, 6])),
            "opset 16",
        ),
        (
            case("MaxPool_storage_order", "MaxPool", 18)
                .attr(attr_ints("kernel_shape", &[2, 2]))
                .attr(attr_int("storage_order", 1))
                .input(g.f64_distinct(&[1, 1, 4, 4])),
            "storage_order",
        ),
        (
            case("AveragePool_ceil_mode", "AveragePool", 18)
                .attr(attr_ints("kernel_shape", &[2]))
                .attr(attr_ints("strides", &[2]))
                .attr(attr_int("ceil_mode", 1))
                .input(g.f32(&[1, 1, 5])),
            "ceil_mode",
        ),
    ];
    for (c, want) in cases {
        let e = c
            .run()
            .err()
            .unwrap_or_else(|| panic!("[{}] differentiated without an error", c.label));
        assert!(
            e.contains("node 'node'") && e.contains(want),
            "[{}] {e}",
            c.label
        );
    }
}

/// Opset 13's BatchNormalization: training is told by the running-statistic outputs.
#[test]
fn batch_normalization_opset13_training() {
    let mut g = Gen::new(33);
    let mut s = Suite::new("batchnorm13");
    // The opset-9 schema allows 1 or 5 outputs; training mode needs all 5.
    {
        let outs = 5;
        s.add(
            case(
                &format!("BatchNorm13_train_{outs}_outputs"),
                "BatchNormalization",
                13,
            )
            .outputs(outs)
            .loss_on(&[0])
            .input(g.f64(&[4, 2, 3]))
            .input(g.f64_in(&[2], 0.5, 1.5))
            .input(g.f64(&[2]))
            .inputs(vec![
                const64(&g.a64(&[2])),
                const64(&g.range64(&[2], 0.5, 2.0)),
            ]),
        );
    }
    s.run();
}
