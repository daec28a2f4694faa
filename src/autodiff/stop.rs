//! The stop-gradient table: which op inputs and outputs carry no gradient.
//!
//! Shapes, indices, axes, masks and random draws are not differentiable; neither are the
//! outputs of comparisons, shape queries or integer casts. Reachability from a trainable
//! parameter to the loss only follows differentiable edges, so these are never
//! differentiated (and parameters feeding only such inputs are buffers, not parameters).

use crate::proto::{DataType, NodeExt, NodeProto, is_float};

/// Ops none of whose outputs carry a gradient.
pub const NON_DIFFERENTIABLE_OPS: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Mod",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "EyeLike",
    "ConstantOfShape",
    "OneHot",
    "Range",
    "IsNaN",
    "IsInf",
    "Constant",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitwiseNot",
    "Unique",
];

/// Whether input `slot` of `node` is non-differentiable (shape, indices, axes, ...).
pub fn is_stop_input(node: &NodeProto, slot: usize) -> bool {
    let op = node.op_type();
    if NON_DIFFERENTIABLE_OPS.contains(&op) {
        return true;
    }
    match op {
        "Reshape"
        | "Expand"
        | "Tile"
        | "Gather"
        | "GatherElements"
        | "GatherND"
        | "Squeeze"
        | "Unsqueeze"
        | "Split"
        | "TopK"
        | "CumSum"
        | "Trilu"
        | "ReduceSum"
        | "ReduceMean"
        | "ReduceMax"
        | "ReduceMin"
        | "ReduceProd"
        | "ReduceLogSumExp"
        | "ReduceL2"
        | "ReduceL1"
        | "ReduceSumSquare"
        | "ReduceLogSum"
        | "SoftmaxCrossEntropyLoss"
        | "NegativeLogLikelihoodLoss" => slot >= 1,
        "Slice" | "Pad" | "Resize" | "Dropout" => slot >= 1,
        "Clip" => slot >= 1,
        "CastLike" => slot == 1,
        "Where" => slot == 0,
        "ScatterElements" | "ScatterND" => slot == 1,
        "BatchNormalization" => slot == 3 || slot == 4,
        _ => false,
    }
}

/// Whether output `slot` of `node` is non-differentiable.
pub fn is_stop_output(node: &NodeProto, slot: usize) -> bool {
    let op = node.op_type();
    if NON_DIFFERENTIABLE_OPS.contains(&op) {
        return true;
    }
    match op {
        "Cast" => !is_float(node.attr_i("to").unwrap_or(DataType::Float as i64) as i32),
        "CastLike" => false,
        // Running statistics and saved mean/variance are state, not gradient paths.
        "BatchNormalization" => slot >= 1,
        // Dropout's mask, MaxPool's indices, TopK's indices.
        "Dropout" | "MaxPool" | "TopK" => slot >= 1,
        _ => false,
    }
}
