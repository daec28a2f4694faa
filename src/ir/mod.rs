//! The graph layer every rewrite goes through.
//!
//! - [`Graph`] holds a model's main graph in editable form next to the rest of the model.
//! - [`NameAuthority`] hands out unique value and node names.
//! - [`Builder`] records the nodes, initializers and opsets a pass adds; the result is a
//!   [`Patch`] that [`Graph::apply`] applies in one step. A value the patch replaces keeps
//!   its name, so graph outputs and downstream consumers survive.
//! - [`Graph::toposort`] (stable), [`Graph::remove_dead`] and [`Graph::check`] (every input
//!   defined, names unique, opsets imported, nodes in order) complete it. The check runs
//!   after every pass in tests and debug builds.

mod builder;
mod check;
pub mod infer;

pub use builder::{Builder, Patch};

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::Result;
use crate::proto::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
    attribute_proto::AttributeType,
};

/// FxHash, rustc's hasher: the graph layer's sets and maps of value names use it. Names
/// come from the model being edited, so SipHash's resistance to crafted collisions buys
/// nothing, and hashing names was the largest single cost of building a backward graph.
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl NameHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type NameSet<T> = HashSet<T, BuildHasherDefault<NameHasher>>;
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;

/// Whether every patch is followed by the validity check: always in debug builds, and
/// in release builds when `REGRAFT_CHECK=1` (the test suite sets it).
pub fn checks_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(debug_assertions) || std::env::var_os("REGRAFT_CHECK").is_some_and(|v| v == "1")
    })
}

/// Hands out names that are unique across values, nodes and initializers of a graph.
#[derive(Default, Debug)]
pub struct NameAuthority {
    used: RefCell<NameSet<String>>,
    counters: RefCell<NameMap<String, usize>>,
}

impl NameAuthority {
    /// Register a name that exists already.
    pub fn reserve(&self, name: &str) {
        if !name.is_empty() {
            self.used.borrow_mut().insert(name.to_string());
        }
    }
    pub fn is_used(&self, name: &str) -> bool {
        self.used.borrow().contains(name)
    }
    /// `base` itself if it is free, else `base_1`, `base_2`, ...; the name is reserved.
    pub fn fresh(&self, base: &str) -> String {
        let base = if base.is_empty() { "v" } else { base };
        let mut used = self.used.borrow_mut();
        if used.insert(base.to_string()) {
            return base.to_string();
        }
        let mut counters = self.counters.borrow_mut();
        let c = counters.entry(base.to_string()).or_insert(0);
        loop {
            *c += 1;
            let cand = format!("{base}_{c}");
            if used.insert(cand.clone()) {
                return cand;
            }
        }
    }
}

/// A model's main graph in editable form, with the model around it.
#[derive(Debug)]
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    pub initializers: Vec<TensorProto>,
    pub value_info: Vec<ValueInfoProto>,
    /// Imported opsets, domain → version ("" is the default domain).
    pub opsets: BTreeMap<String, i64>,
    pub names: NameAuthority,
    /// The model without its graph and opset imports: metadata, functions, IR version.
    pub model: ModelProto,
    /// The graph proto's own fields besides the ones above (name, doc string, ...).
    pub graph_meta: GraphProto,
}

impl Graph {
    pub fn from_model(mut model: ModelProto) -> Graph {
        let mut g = model.graph.take().unwrap_or_default();
        let opsets = model
            .opset_import
            .drain(..)
            .map(|o| (normalize_domain(o.domain()).to_string(), o.version()))
            .collect();
        let graph = Graph {
            nodes: std::mem::take(&mut g.node),
            inputs: std::mem::take(&mut g.input),
            outputs: std::mem::take(&mut g.output),
            initializers: std::mem::take(&mut g.initializer),
            value_info: std::mem::take(&mut g.value_info),
            opsets,
            names: NameAuthority::default(),
            model,
            graph_meta: g,
        };
        graph.reserve_all_names();
        graph
    }

    fn reserve_all_names(&self) {
        for vi in self
            .inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
        {
            self.names.reserve(vi.name());
        }
        for t in &self.initializers {
            self.names.reserve(t.name());
        }
        for n in &self.nodes {
            self.names.reserve(n.name());
            for v in n.input.iter().chain(&n.output) {
                self.names.reserve(v);
            }
            for_each_subgraph(n, &mut |sub| reserve_subgraph(&self.names, sub));
        }
    }

    /// The model proto, graph included.
    pub fn to_model(&self) -> ModelProto {
        let mut m = self.model.clone();
        let mut g = self.graph_meta.clone();
        g.node = self.nodes.clone();
        g.input = self.inputs.clone();
        g.output = self.outputs.clone();
        g.initializer = self.initializers.clone();
        g.value_info = self.value_info.clone();
        m.graph = Some(g);
        m.opset_import = opset_imports(&self.opsets);
        m
    }

    /// The model proto, graph included, without copying the graph as [`Graph::to_model`]
    /// does.
    pub fn into_model(self) -> ModelProto {
        let mut m = self.model;
        m.graph = Some(GraphProto {
            node: self.nodes,
            input: self.inputs,
            output: self.outputs,
            initializer: self.initializers,
            value_info: self.value_info,
            ..self.graph_meta
        });
        m.opset_import = opset_imports(&self.opsets);
        m
    }

    /// Version of the default-domain opset.
    pub fn opset(&self) -> i64 {
        self.opsets.get("").copied().unwrap_or(0)
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.initializers.iter().find(|t| t.name() == name)
    }

    /// Graph inputs that are real inputs (not initializers listed as inputs, as IR < 4 did).
    pub fn real_inputs(&self) -> impl Iterator<Item = &ValueInfoProto> {
        let inits: HashSet<&str> = self.initializers.iter().map(|t| t.name()).collect();
        self.inputs
            .iter()
            .filter(move |i| !inits.contains(i.name()))
    }

    /// Map from value name to the index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.output {
                if !o.is_empty() {
                    m.insert(o.as_str(), i);
                }
            }
        }
        m
    }

    /// Map from value name to the (node index, input slot) pairs consuming it.
    pub fn consumers(&self) -> HashMap<&str, Vec<(usize, usize)>> {
        let mut m: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (s, v) in n.input.iter().enumerate() {
                if !v.is_empty() {
                    m.entry(v.as_str()).or_default().push((i, s));
                }
            }
        }
        m
    }

    /// The declared value info of a value (graph input, output or value_info), if any.
    pub fn declared(&self, name: &str) -> Option<&ValueInfoProto> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|v| v.name() == name)
    }

    /// Sort nodes topologically, keeping the current order wherever it is already valid.
    pub fn toposort(&mut self) -> Result<()> {
        let n = self.nodes.len();
        let mut produced_by: NameMap<&str, usize> = NameMap::default();
        produced_by.reserve(n);
        for (i, node) in self.nodes.iter().enumerate() {
            for o in &node.output {
                if !o.is_empty() {
                    produced_by.insert(o.as_str(), i);
                }
            }
        }
        let mut indeg = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        let (mut uses, mut deps) = (Vec::new(), Vec::new());
        for (i, node) in self.nodes.iter().enumerate() {
            uses.clear();
            uses_into(node, &mut uses);
            deps.clear();
            deps.extend(
                uses.iter()
                    .filter_map(|v| produced_by.get(v).copied())
                    .filter(|&p| p != i),
            );
            deps.sort_unstable();
            deps.dedup();
            indeg[i] = deps.len();
            for &d in &deps {
                users[d].push(i);
            }
        }
        drop(produced_by);
        // Min-heap on original index gives the stable order.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indeg[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() != n {
            let stuck: Vec<String> = (0..n)
                .filter(|&i| indeg[i] > 0)
                .take(3)
                .map(|i| crate::proto::NodeExt::describe(&self.nodes[i]))
                .collect();
            return Err(crate::error::Error::Invalid {
                pass: "toposort".into(),
                msg: format!("the graph has a cycle through {}", stuck.join(", ")),
            });
        }
        let mut old: Vec<Option<NodeProto>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order
            .into_iter()
            .map(|i| old[i].take().expect("each node once"))
            .collect();
        Ok(())
    }

    /// Remove nodes whose outputs reach no graph output, and initializers nobody uses.
    pub fn remove_dead(&mut self) -> usize {
        let mut live: NameSet<&str> = self.outputs.iter().map(|o| o.name()).collect();
        let mut keep = vec![false; self.nodes.len()];
        let mut uses = Vec::new();
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if node.output.iter().any(|o| live.contains(o.as_str())) {
                keep[i] = true;
                uses.clear();
                uses_into(node, &mut uses);
                live.extend(&uses);
            }
        }
        let dead: NameSet<String> = self
            .initializers
            .iter()
            .filter(|t| !live.contains(t.name()))
            .map(|t| t.name().to_string())
            .collect();
        let keep_info: Vec<bool> = self
            .value_info
            .iter()
            .map(|v| live.contains(v.name()))
            .collect();
        drop(live);
        let before = self.nodes.len();
        let mut it = keep.iter();
        self.nodes
            .retain(|_| *it.next().expect("one flag per node"));
        let removed = before - self.nodes.len();
        self.initializers.retain(|t| !dead.contains(t.name()));
        // An initializer that is also listed as a graph input (IR < 4) leaves with its
        // input entry; otherwise it would become an input every caller has to feed.
        self.inputs.retain(|i| !dead.contains(i.name()));
        let mut it = keep_info.iter();
        self.value_info
            .retain(|_| *it.next().expect("one flag per value info"));
        removed
    }

    /// Add an opset import, or raise an existing one to at least `version`.
    pub fn require_opset(&mut self, domain: &str, version: i64) {
        let e = self
            .opsets
            .entry(normalize_domain(domain).to_string())
            .or_insert(version);
        *e = (*e).max(version);
    }
}

fn opset_imports(opsets: &BTreeMap<String, i64>) -> Vec<OperatorSetIdProto> {
    opsets
        .iter()
        .map(|(d, v)| OperatorSetIdProto {
            domain: Some(d.clone()),
            version: Some(*v),
        })
        .collect()
}

fn normalize_domain(d: &str) -> &str {
    if d == "ai.onnx" { "" } else { d }
}

fn reserve_subgraph(names: &NameAuthority, g: &GraphProto) {
    for t in &g.initializer {
        names.reserve(t.name());
    }
    for n in &g.node {
        names.reserve(n.name());
        for v in n.input.iter().chain(&n.output) {
            names.reserve(v);
        }
        for_each_subgraph(n, &mut |sub| reserve_subgraph(names, sub));
    }
}

/// Call `f` on every graph attribute of a node (If/Loop/Scan bodies).
pub fn for_each_subgraph<'a>(n: &'a NodeProto, f: &mut dyn FnMut(&'a GraphProto)) {
    for a in &n.attribute {
        if a.r#type() == AttributeType::Graph
            && let Some(g) = &a.g
        {
            f(g);
        }
        for g in &a.graphs {
            f(g);
        }
    }
}

/// Every value a node reads: its inputs plus the outer-scope values its subgraphs read.
pub fn node_uses(n: &NodeProto) -> Vec<String> {
    let mut out = Vec::new();
    uses_into(n, &mut out);
    out.into_iter().map(str::to_string).collect()
}

/// [`node_uses`], borrowed and appended to `out` (the passes reuse one buffer).
pub(crate) fn uses_into<'a>(n: &'a NodeProto, out: &mut Vec<&'a str>) {
    out.extend(n.input.iter().filter(|s| !s.is_empty()).map(String::as_str));
    for_each_subgraph(n, &mut |g| subgraph_outer_uses(g, out));
}

/// Append the names a subgraph reads that it does not define itself.
fn subgraph_outer_uses<'a>(g: &'a GraphProto, outer: &mut Vec<&'a str>) {
    let mut defined: NameSet<&str> = NameSet::default();
    defined.extend(g.input.iter().map(|i| i.name()));
    defined.extend(g.initializer.iter().map(|t| t.name()));
    let mut uses = Vec::new();
    for n in &g.node {
        uses.clear();
        uses_into(n, &mut uses);
        outer.extend(uses.iter().filter(|v| !defined.contains(*v)));
        defined.extend(n.output.iter().map(String::as_str));
    }
    outer.extend(
        g.output
            .iter()
            .map(|o| o.name())
            .filter(|o| !defined.contains(o)),
    );
}
