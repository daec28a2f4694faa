//! Recording builder and patches: how every pass changes a graph.

use std::collections::{HashMap, HashSet};

use super::{Graph, NameAuthority};
use crate::error::Result;
use crate::proto::{
    AttributeProto, DataType, Element, NodeProto, TensorProto, ValueInfoProto, make_node, tensor,
};

/// A set of changes applied to a graph in one step by [`Graph::apply`].
#[derive(Default, Debug)]
pub struct Patch {
    /// The rule or pass that made the patch; stamped on what it creates.
    pub rule: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub opsets: Vec<(String, i64)>,
    /// Indices of existing nodes to remove.
    pub remove: HashSet<usize>,
    /// `(old, new)`: the value `new` takes over `old`'s consumers and `old`'s name, so
    /// graph outputs and later nodes see the replacement under the original name.
    pub replace: Vec<(String, String)>,
    pub add_inputs: Vec<ValueInfoProto>,
    pub add_outputs: Vec<ValueInfoProto>,
}

/// Records nodes, initializers and opsets for a [`Patch`]; names come from the graph's
/// [`NameAuthority`].
pub struct Builder<'a> {
    names: &'a NameAuthority,
    /// Prefix of the names of everything the builder creates (e.g. `"grad/conv1/"`).
    pub prefix: String,
    pub patch: Patch,
    consts: HashMap<(i32, Vec<i64>, Vec<u8>), String>,
    shared: HashMap<(String, Vec<String>), String>,
}

impl<'a> Builder<'a> {
    pub fn new(graph: &'a Graph, rule: &str) -> Builder<'a> {
        Builder {
            names: &graph.names,
            prefix: String::new(),
            patch: Patch {
                rule: rule.to_string(),
                ..Default::default()
            },
            consts: HashMap::new(),
            shared: HashMap::new(),
        }
    }

    /// A fresh unique name derived from `base` (with the builder's prefix).
    pub fn fresh(&self, base: &str) -> String {
        self.names.fresh(&format!("{}{base}", self.prefix))
    }

    /// A fresh name without the prefix (for names users see, such as `w_grad`).
    pub fn fresh_exact(&self, name: &str) -> String {
        self.names.fresh(name)
    }

    /// Add a node with explicit output names; returns them.
    pub fn node_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let name = self.fresh(op);
        let mut n = make_node(op, &name, inputs, outputs, attrs);
        if !self.patch.rule.is_empty() {
            n.doc_string = Some(format!("regraft:{}", self.patch.rule));
        }
        self.patch.nodes.push(n);
        outputs.iter().map(|s| s.to_string()).collect()
    }

    /// Add a node with `n_out` fresh outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n_out: usize,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out)
            .map(|i| self.fresh(&format!("{op}_out{i}")))
            .collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node_to(op, inputs, &refs, attrs)
    }

    /// Add a single-output node without attributes.
    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.op_a(op, inputs, vec![])
    }

    /// Like [`op`](Self::op), but a node with the same op and inputs made before by this
    /// method is reused (e.g. the optimizer's per-step scalars, computed once for all
    /// parameters).
    pub fn op_shared(&mut self, op: &str, inputs: &[&str]) -> String {
        let key = (
            op.to_string(),
            inputs.iter().map(|s| s.to_string()).collect(),
        );
        if let Some(v) = self.shared.get(&key) {
            return v.clone();
        }
        let v = self.op(op, inputs);
        self.shared.insert(key, v.clone());
        v
    }

    /// Add a single-output node with attributes.
    pub fn op_a(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, attrs, 1).pop().expect("one output")
    }

    /// Add an initializer; returns its name.
    pub fn initializer(&mut self, hint: &str, mut t: TensorProto) -> String {
        let name = self.fresh(hint);
        t.name = Some(name.clone());
        self.patch.initializers.push(t);
        name
    }

    /// A constant tensor, shared between uses with the same dtype, shape and value.
    pub fn constant<T: Element>(&mut self, dims: &[i64], data: &[T]) -> String {
        let t = tensor::<T>("", dims, data);
        let key = (
            T::DTYPE as i32,
            dims.to_vec(),
            t.raw_data.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
        );
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.initializer("const", t);
        self.consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant (axes, shapes, starts/ends).
    pub fn ints(&mut self, v: &[i64]) -> String {
        self.constant::<i64>(&[v.len() as i64], v)
    }

    /// A scalar constant of the given floating-point type.
    pub fn scalar_of(&mut self, dt: i32, v: f64) -> String {
        if dt == DataType::Double as i32 {
            self.constant::<f64>(&[], &[v])
        } else {
            self.constant::<f32>(&[], &[v as f32])
        }
    }

    pub fn require_opset(&mut self, domain: &str, version: i64) {
        self.patch.opsets.push((domain.to_string(), version));
    }

    pub fn finish(self) -> Patch {
        self.patch
    }
}

impl Graph {
    /// Apply a patch in one step, then restore topological order. In debug builds and
    /// tests the validity check runs afterwards.
    pub fn apply(&mut self, p: Patch) -> Result<()> {
        let Patch {
            rule,
            mut nodes,
            initializers,
            opsets,
            remove,
            replace,
            add_inputs,
            add_outputs,
        } = p;
        // Values whose producer the patch removes: a replacement takes over their name.
        let removed_values: HashSet<String> = remove
            .iter()
            .filter_map(|&i| self.nodes.get(i))
            .flat_map(|n| n.output.iter().filter(|o| !o.is_empty()).cloned())
            .collect();
        if !remove.is_empty() {
            let mut i = 0;
            self.nodes.retain(|_| {
                let keep = !remove.contains(&i);
                i += 1;
                keep
            });
        }
        for (old, new) in replace {
            let producer = self.nodes.iter_mut().find(|n| n.output.contains(&old));
            let takes_name = if let Some(prod) = producer {
                // The original value is renamed; the replacement takes the old name.
                let pre = self.names.fresh(&format!("{old}_pre"));
                for o in prod.output.iter_mut().filter(|o| **o == old) {
                    *o = pre.clone();
                }
                for n in nodes.iter_mut() {
                    for v in n.input.iter_mut().filter(|v| **v == old) {
                        *v = pre.clone();
                    }
                }
                true
            } else {
                removed_values.contains(&old)
            };
            if !takes_name {
                // A graph input or initializer keeps its name; its consumers move over.
                for n in self.nodes.iter_mut() {
                    for v in n.input.iter_mut().filter(|v| **v == old) {
                        *v = new.clone();
                    }
                }
                for o in self.outputs.iter_mut().filter(|o| o.name() == old) {
                    o.name = Some(new.clone());
                }
            } else if nodes.iter().any(|n| n.output.contains(&new)) {
                for n in nodes.iter_mut() {
                    for v in n
                        .input
                        .iter_mut()
                        .chain(n.output.iter_mut())
                        .filter(|v| **v == new)
                    {
                        *v = old.clone();
                    }
                }
            } else {
                // The replacement exists already (a graph input, an initializer or another
                // node's output) and keeps its own name: an Identity carries it to `old`.
                let mut id = make_node(
                    "Identity",
                    &self.names.fresh(&format!("{old}_replaced")),
                    &[&new],
                    &[&old],
                    vec![],
                );
                if !rule.is_empty() {
                    id.doc_string = Some(format!("regraft:{rule}"));
                }
                nodes.push(id);
            }
        }
        self.nodes.extend(nodes);
        self.initializers.extend(initializers);
        for (d, v) in opsets {
            self.require_opset(&d, v);
        }
        self.inputs.extend(add_inputs);
        self.outputs.extend(add_outputs);
        self.toposort()?;
        if super::checks_enabled() {
            self.check(if rule.is_empty() { "patch" } else { &rule })?;
        }
        Ok(())
    }
}
