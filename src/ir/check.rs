//! The validity check run after every pass in tests and debug builds.

use super::{Graph, NameSet, uses_into};
use crate::error::{Error, Result};
use crate::proto::NodeExt;

impl Graph {
    /// Every input defined before use, value and node names unique, every node's domain
    /// imported, graph outputs defined.
    pub fn check(&self, pass: &str) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::Invalid {
                pass: pass.to_string(),
                msg,
            })
        };
        let mut defined: NameSet<&str> = NameSet::default();
        for i in &self.inputs {
            if !defined.insert(i.name()) && self.initializer(i.name()).is_none() {
                return bad(format!("graph input '{}' is declared twice", i.name()));
            }
        }
        for t in &self.initializers {
            if !defined.insert(t.name()) && !self.inputs.iter().any(|i| i.name() == t.name()) {
                return bad(format!("initializer '{}' is defined twice", t.name()));
            }
        }
        let mut node_names: NameSet<&str> = NameSet::default();
        let mut uses = Vec::new();
        for n in &self.nodes {
            if !n.name().is_empty() && !node_names.insert(n.name()) {
                return bad(format!("two nodes are named '{}'", n.name()));
            }
            let dom = n.domain();
            let dom = if dom == "ai.onnx" { "" } else { dom };
            if !self.opsets.contains_key(dom) {
                return bad(format!(
                    "{} uses domain '{dom}', which the model does not import",
                    n.describe()
                ));
            }
            uses.clear();
            uses_into(n, &mut uses);
            for &v in &uses {
                if !defined.contains(v) {
                    return bad(format!(
                        "{} reads '{v}', which is not defined before it",
                        n.describe()
                    ));
                }
            }
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o.as_str()) {
                    return bad(format!(
                        "{} writes '{o}', which is already defined",
                        n.describe()
                    ));
                }
            }
        }
        let mut outs: NameSet<&str> = NameSet::default();
        for o in &self.outputs {
            if !defined.contains(o.name()) {
                return bad(format!("graph output '{}' is never computed", o.name()));
            }
            if !outs.insert(o.name()) {
                return bad(format!("graph output '{}' is listed twice", o.name()));
            }
        }
        Ok(())
    }
}
