//! Which values lie on a differentiable path between the trainable parameters and the
//! loss. Only those nodes are differentiated.

use std::collections::HashSet;

use super::stop::{is_stop_input, is_stop_output};
use crate::ir::Graph;
use crate::proto::is_float;

/// Values from which one of `targets` can be reached along differentiable edges
/// (nodes must be in topological order).
pub fn backward_reach(g: &Graph, targets: &[&str]) -> HashSet<String> {
    let mut live: HashSet<String> = targets.iter().map(|s| s.to_string()).collect();
    for n in g.nodes.iter().rev() {
        let hit = n
            .output
            .iter()
            .enumerate()
            .any(|(i, o)| !is_stop_output(n, i) && live.contains(o));
        if hit {
            for (s, v) in n.input.iter().enumerate() {
                if !v.is_empty() && !is_stop_input(n, s) {
                    live.insert(v.clone());
                }
            }
        }
    }
    live
}

/// Values reachable from `sources` along differentiable edges.
pub fn forward_reach(g: &Graph, sources: &HashSet<String>) -> HashSet<String> {
    let mut live = sources.clone();
    for n in &g.nodes {
        let hit = n
            .input
            .iter()
            .enumerate()
            .any(|(s, v)| !is_stop_input(n, s) && live.contains(v));
        if hit {
            for (i, o) in n.output.iter().enumerate() {
                if !o.is_empty() && !is_stop_output(n, i) {
                    live.insert(o.clone());
                }
            }
        }
    }
    live
}

/// Floating-point initializers with a differentiable path to one of `targets`: the
/// trainable parameters. The other floating-point initializers are buffers.
pub fn trainable_initializers(g: &Graph, targets: &[&str]) -> Vec<String> {
    let live = backward_reach(g, targets);
    g.initializers
        .iter()
        .filter(|t| is_float(t.data_type()) && live.contains(t.name()))
        .map(|t| t.name().to_string())
        .collect()
}
