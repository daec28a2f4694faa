//! The gradient artifact of `regraft grad`: forward + loss head + backward graph, with
//! outputs `loss` and `<param>_grad` for every trainable parameter.

use crate::autodiff::{differentiate, reach::trainable_initializers};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::proto::{ModelProto, value_info};
use crate::train::loss::{LossHead, LossKind, add_loss, find_logits};

#[derive(Clone, Debug, Default)]
pub struct GradOptions {
    pub loss: LossKind,
    pub logits: Option<String>,
    /// Glob patterns (`*`, `?`) of parameters to keep fixed.
    pub freeze: Vec<String>,
    pub regularizer: crate::regularizers::Regularizer,
}

/// What [`grad_graph`] built.
pub struct GradGraph {
    pub graph: Graph,
    pub head: LossHead,
    /// (parameter, gradient value) pairs, in initializer order.
    pub grads: Vec<(String, String)>,
}

/// Simple glob matching with `*` (any run) and `?` (one character).
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Forward + loss + backward. The graph's outputs become `loss` and the gradients.
pub fn grad_graph(model: ModelProto, opts: &GradOptions) -> Result<GradGraph> {
    let mut g = Graph::from_model(model);
    // Parameters come from the model's own initializers, never from constants a rewrite adds.
    let original: std::collections::HashSet<String> = g
        .initializers
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let logits = find_logits(&g, opts.logits.as_deref())?;
    let head = add_loss(&mut g, opts.loss, &logits)?;
    if let crate::regularizers::Regularizer::InverseRate(ir) = &opts.regularizer {
        if ir.lambda_mode == crate::regularizers::LambdaMode::Validated {
            return Err(Error::flag(
                "--lambda-mode",
                "validated λ is learned during training; check a fixed λ with regraft grad",
            ));
        }
        crate::regularizers::inverse_rate::rewrite(&mut g, ir, &head.loss, &head.per_sample, None)?;
    }
    let params: Vec<String> = trainable_initializers(&g, &[&head.loss])
        .into_iter()
        .filter(|p| original.contains(p) && !opts.freeze.iter().any(|f| glob_match(f, p)))
        .collect();
    for f in &opts.freeze {
        if !g.initializers.iter().any(|t| glob_match(f, t.name())) {
            return Err(Error::flag(
                "--freeze",
                format!("the pattern '{f}' matches no initializer"),
            ));
        }
    }
    let grads = differentiate(&mut g, &head.loss, &params)?;
    let loss_vi = {
        let dt = crate::ir::infer::infer(&g).dtype(&head.loss).unwrap_or(1);
        value_info(&head.loss, dt, &[])
    };
    let mut outputs = vec![loss_vi];
    let by_name: std::collections::HashMap<&str, &crate::proto::TensorProto> =
        g.initializers.iter().map(|t| (t.name(), t)).collect();
    for (p, gname) in params.iter().zip(&grads) {
        let t = by_name[p.as_str()];
        let dims: Vec<crate::proto::Dim> = t
            .dims
            .iter()
            .map(|&d| crate::proto::Dim::Fixed(d))
            .collect();
        outputs.push(value_info(gname, t.data_type(), &dims));
    }
    g.outputs = outputs;
    g.remove_dead();
    g.check("grad")?;
    Ok(GradGraph {
        graph: g,
        head,
        grads: params.into_iter().zip(grads).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("fc1.*", "fc1.weight"));
        assert!(glob_match("*.bias", "layer.0.bias"));
        assert!(!glob_match("*.bias", "layer.0.weight"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
    }
}
