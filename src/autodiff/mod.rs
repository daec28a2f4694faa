//! Reverse-mode automatic differentiation to standard ONNX ops.

pub mod reach;
pub mod stop;

use std::collections::BTreeSet;

use crate::ir::Graph;

/// Op types with a gradient rule. (Filled by the rule registry.)
pub fn has_rule(op: &str) -> bool {
    let _ = op;
    false
}

/// Op types on a differentiable path between an initializer and `targets` that have no
/// gradient rule.
pub fn ops_without_rule(g: &Graph, targets: &[&str]) -> Vec<String> {
    let back = reach::backward_reach(g, targets);
    let params: std::collections::HashSet<String> = g
        .initializers
        .iter()
        .filter(|t| crate::proto::is_float(t.data_type()))
        .map(|t| t.name().to_string())
        .collect();
    let fwd = reach::forward_reach(g, &params);
    let mut out = BTreeSet::new();
    for n in &g.nodes {
        let on_path = n.output.iter().any(|o| back.contains(o) && fwd.contains(o));
        if on_path && !has_rule(n.op_type()) {
            out.insert(n.op_type().to_string());
        }
    }
    out.into_iter().collect()
}
