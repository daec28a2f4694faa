//! The graph layer (issue #2): unique names, patches whose replacements keep the old names
//! (checked by running the result in ONNX Runtime), stable toposort, dead-code removal and
//! the validity check's messages.

mod common;

use std::collections::HashSet;

use ndarray::{ArrayD, IxDyn};
use ort::value::TensorRef;
use prost::Message;
use regraft::ir::{Builder, Graph, NameAuthority};
use regraft::proto::{
    DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto, make_node, tensor, value_info,
};
use regraft::runtime::{SessionOptions, session};

fn vi(name: &str) -> ValueInfoProto {
    value_info(name, DataType::Float as i32, &[Dim::Param("N".into())])
}

fn graph(
    nodes: Vec<NodeProto>,
    inputs: &[&str],
    outputs: &[&str],
    inits: Vec<TensorProto>,
) -> Graph {
    Graph::from_model(ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(18),
        }],
        graph: Some(GraphProto {
            name: Some("test".into()),
            node: nodes,
            input: inputs.iter().map(|s| vi(s)).collect(),
            output: outputs.iter().map(|s| vi(s)).collect(),
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    make_node(op, name, inputs, outputs, vec![])
}

fn node_names(g: &Graph) -> Vec<&str> {
    g.nodes.iter().map(|n| n.name()).collect()
}

/// Run the graph on ORT's CPU provider with one float input `x`; returns every output.
fn run(g: &Graph, x: &[f32]) -> Vec<Vec<f32>> {
    let bytes = g.to_model().encode_to_vec();
    let mut s = session(&bytes, &SessionOptions::default()).expect("ORT session");
    let x = ArrayD::from_shape_vec(IxDyn(&[x.len()]), x.to_vec()).unwrap();
    let outs = s
        .run(ort::inputs!["x" => TensorRef::from_array_view(&x).unwrap()])
        .expect("ORT run");
    g.outputs
        .iter()
        .map(|o| {
            outs[o.name()]
                .try_extract_array::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Names

#[test]
fn name_authority_hands_out_unique_names() {
    let names = NameAuthority::default();
    names.reserve("x");
    names.reserve("y_1");
    assert!(names.is_used("x") && !names.is_used("y"));
    assert_eq!(names.fresh("x"), "x_1");
    assert_eq!(names.fresh("x"), "x_2");
    assert_eq!(names.fresh("y"), "y");
    assert_eq!(names.fresh("y"), "y_2", "y_1 was reserved");
    assert_eq!(names.fresh(""), "v");
    assert_eq!(names.fresh("x_1"), "x_1_1");
    let mut seen = HashSet::new();
    for i in 0..1000 {
        let base = ["a", "a_1", "b", "a_2"][i % 4];
        let n = names.fresh(base);
        assert!(seen.insert(n.clone()), "{n} handed out twice");
    }
}

#[test]
fn graph_reserves_every_existing_name() {
    let g = graph(
        vec![node("Relu", "relu", &["x"], &["y"])],
        &["x"],
        &["y"],
        vec![tensor::<f32>("w", &[1], &[1.0])],
    );
    for taken in ["x", "y", "relu", "w"] {
        assert_ne!(g.names.fresh(taken), taken);
    }
    let b = Builder::new(&g, "test");
    assert_eq!(b.fresh("y"), "y_2", "the graph's authority is shared");
}

// ---------------------------------------------------------------------------------------
// Patches

/// x → Relu → y (graph output) → Neg → z (graph output).
fn relu_neg() -> Graph {
    graph(
        vec![
            node("Relu", "relu", &["x"], &["y"]),
            node("Neg", "neg", &["y"], &["z"]),
        ],
        &["x"],
        &["y", "z"],
        vec![],
    )
}

#[test]
fn replace_keeps_the_old_name_so_outputs_survive() {
    let mut g = relu_neg();
    assert_eq!(
        run(&g, &[-1.0, 2.0, 3.0]),
        vec![vec![0.0, 2.0, 3.0], vec![-0.0, -2.0, -3.0]]
    );

    // y ← y * 3: the product takes the name `y`; Neg and the graph output see it.
    let mut b = Builder::new(&g, "scale");
    let three = b.constant::<f32>(&[], &[3.0]);
    let scaled = b.op("Mul", &["y", &three]);
    b.patch.replace.push(("y".into(), scaled.clone()));
    g.apply(b.finish()).unwrap();
    g.check("scale").unwrap();

    let outs: Vec<&str> = g.outputs.iter().map(|o| o.name()).collect();
    assert_eq!(outs, ["y", "z"]);
    assert!(
        g.nodes.iter().all(|n| !n.output.contains(&scaled)),
        "{scaled} is gone"
    );
    let mul = g.nodes.iter().find(|n| n.op_type() == "Mul").unwrap();
    assert_eq!(mul.output, ["y"]);
    assert_eq!(
        mul.input[0], "y_pre",
        "the replacement reads the original value"
    );
    assert_eq!(
        mul.doc_string(),
        "regraft:scale",
        "the rule is stamped on its nodes"
    );
    assert_eq!(
        run(&g, &[-1.0, 2.0, 3.0]),
        vec![vec![0.0, 6.0, 9.0], vec![-0.0, -6.0, -9.0]]
    );
}

#[test]
fn replace_a_removed_nodes_output() {
    // Swap Relu for Abs: remove the Relu node, add Abs, and let Abs's output take `y`.
    let mut g = relu_neg();
    let relu = g.nodes.iter().position(|n| n.op_type() == "Relu").unwrap();
    let mut b = Builder::new(&g, "swap");
    let abs = b.op("Abs", &["x"]);
    b.patch.remove.insert(relu);
    b.patch.replace.push(("y".into(), abs));
    g.apply(b.finish()).unwrap();
    g.check("swap").unwrap();
    let outs: Vec<&str> = g.outputs.iter().map(|o| o.name()).collect();
    assert_eq!(outs, ["y", "z"], "the graph output keeps its name");
    assert_eq!(node_names(&g).len(), 2);
    assert_eq!(
        run(&g, &[-1.0, 2.0]),
        vec![vec![1.0, 2.0], vec![-1.0, -2.0]]
    );
}

#[test]
fn replace_with_an_existing_value() {
    // y ← x: the graph input keeps its name; an Identity carries it to `y`.
    let mut g = relu_neg();
    let mut b = Builder::new(&g, "bypass");
    b.patch.replace.push(("y".into(), "x".into()));
    g.apply(b.finish()).unwrap();
    g.check("bypass").unwrap();
    assert!(g.real_inputs().any(|i| i.name() == "x"));
    assert_eq!(
        run(&g, &[-1.0, 2.0]),
        vec![vec![-1.0, 2.0], vec![1.0, -2.0]]
    );
    g.remove_dead();
    assert!(
        g.nodes.iter().all(|n| n.op_type() != "Relu"),
        "Relu is dead now"
    );
    assert_eq!(
        run(&g, &[-1.0, 2.0]),
        vec![vec![-1.0, 2.0], vec![1.0, -2.0]]
    );
}

#[test]
fn replace_an_initializer_moves_its_consumers() {
    // w ← w * 2 for an initializer: it keeps its name, its consumers read the new value.
    let mut g = graph(
        vec![node("Mul", "mul", &["x", "w"], &["y"])],
        &["x"],
        &["y"],
        vec![tensor::<f32>("w", &[1], &[5.0])],
    );
    let mut b = Builder::new(&g, "double");
    let two = b.constant::<f32>(&[1], &[2.0]);
    let w2 = b.op("Mul", &["w", &two]);
    b.patch.replace.push(("w".into(), w2));
    g.apply(b.finish()).unwrap();
    g.check("double").unwrap();
    assert!(g.initializer("w").is_some());
    assert_eq!(run(&g, &[1.0, -2.0]), vec![vec![10.0, -20.0]]);
}

// ---------------------------------------------------------------------------------------
// Toposort

/// a → b → c, plus an independent d; in topological order.
fn chain() -> Vec<NodeProto> {
    vec![
        node("Relu", "a", &["x"], &["va"]),
        node("Neg", "b", &["va"], &["vb"]),
        node("Abs", "c", &["vb"], &["vc"]),
        node("Exp", "d", &["x"], &["vd"]),
    ]
}

#[test]
fn toposort_keeps_a_sorted_graph_as_it_is() {
    // Also a valid order that is not the only one: d could come first, but stays last.
    let mut g = graph(chain(), &["x"], &["vc", "vd"], vec![]);
    g.toposort().unwrap();
    assert_eq!(node_names(&g), ["a", "b", "c", "d"]);
    let mut g = graph(
        vec![
            chain()[3].clone(),
            chain()[0].clone(),
            chain()[1].clone(),
            chain()[2].clone(),
        ],
        &["x"],
        &["vc", "vd"],
        vec![],
    );
    g.toposort().unwrap();
    assert_eq!(node_names(&g), ["d", "a", "b", "c"]);
}

#[test]
fn toposort_fixes_a_shuffled_graph() {
    let n = chain();
    let mut g = graph(
        vec![n[2].clone(), n[0].clone(), n[3].clone(), n[1].clone()],
        &["x"],
        &["vc", "vd"],
        vec![],
    );
    let e = g.check("shuffle").unwrap_err().to_string();
    assert!(e.contains("node 'c' (Abs)") && e.contains("'vb'"), "{e}");
    g.toposort().unwrap();
    g.check("toposort").unwrap();
    // Stable: ready nodes in their original order (a, then d before b which waits on a).
    assert_eq!(node_names(&g), ["a", "d", "b", "c"]);
}

#[test]
fn toposort_reports_a_cycle() {
    let mut g = graph(
        vec![
            node("Add", "p", &["x", "vq"], &["vp"]),
            node("Neg", "q", &["vp"], &["vq"]),
        ],
        &["x"],
        &["vq"],
        vec![],
    );
    let e = g.toposort().unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("node 'p' (Add)"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Dead code

#[test]
fn remove_dead_drops_unused_nodes_and_initializers() {
    let mut g = graph(
        vec![
            node("Mul", "live", &["x", "w"], &["y"]),
            node("Add", "dead1", &["x", "unused_w"], &["t"]),
            node("Neg", "dead2", &["t"], &["u"]),
        ],
        &["x"],
        &["y"],
        vec![
            tensor::<f32>("w", &[1], &[2.0]),
            tensor::<f32>("unused_w", &[1], &[1.0]),
            tensor::<f32>("never_read", &[2], &[1.0, 2.0]),
        ],
    );
    assert_eq!(g.remove_dead(), 2);
    assert_eq!(node_names(&g), ["live"]);
    let inits: Vec<&str> = g.initializers.iter().map(|t| t.name()).collect();
    assert_eq!(inits, ["w"]);
    g.check("remove_dead").unwrap();
    assert_eq!(run(&g, &[1.5]), vec![vec![3.0]]);
}

#[test]
fn remove_dead_drops_the_input_entry_of_a_dropped_initializer() {
    // IR < 4 lists initializers as graph inputs too; a dropped one must not stay behind
    // as an input every caller would then have to feed.
    let mut g = graph(
        vec![node("Relu", "relu", &["x"], &["y"])],
        &["x", "old_w"],
        &["y"],
        vec![tensor::<f32>("old_w", &[1], &[1.0])],
    );
    assert_eq!(g.real_inputs().count(), 1);
    g.remove_dead();
    let inputs: Vec<&str> = g.inputs.iter().map(|i| i.name()).collect();
    assert_eq!(inputs, ["x"]);
    assert_eq!(run(&g, &[-1.0, 1.0]), vec![vec![0.0, 1.0]]);
}

// ---------------------------------------------------------------------------------------
// Check

#[test]
fn check_rejects_an_undefined_input() {
    let g = graph(
        vec![node("Add", "add", &["x", "nope"], &["y"])],
        &["x"],
        &["y"],
        vec![],
    );
    let e = g.check("my_pass").unwrap_err().to_string();
    assert!(e.contains("my_pass"), "names the pass: {e}");
    assert!(
        e.contains("node 'add' (Add)") && e.contains("'nope'"),
        "{e}"
    );
}

#[test]
fn check_rejects_a_value_written_twice() {
    let g = graph(
        vec![
            node("Relu", "first", &["x"], &["y"]),
            node("Neg", "second", &["x"], &["y"]),
        ],
        &["x"],
        &["y"],
        vec![],
    );
    let e = g.check("dup").unwrap_err().to_string();
    assert!(
        e.contains("node 'second' (Neg)") && e.contains("'y'"),
        "{e}"
    );
}

#[test]
fn check_rejects_a_domain_that_is_not_imported() {
    let mut n = node("FusedMatMul", "fused", &["x", "x"], &["y"]);
    n.domain = Some("com.microsoft".into());
    let mut g = graph(vec![n], &["x"], &["y"], vec![]);
    let e = g.check("fuse").unwrap_err().to_string();
    assert!(
        e.contains("node 'fused' (com.microsoft::FusedMatMul)") && e.contains("'com.microsoft'"),
        "{e}"
    );
    g.require_opset("com.microsoft", 1);
    g.check("fuse").unwrap();
}

#[test]
fn check_rejects_duplicate_node_names_and_missing_outputs() {
    let g = graph(
        vec![
            node("Relu", "r", &["x"], &["y"]),
            node("Neg", "r", &["y"], &["z"]),
        ],
        &["x"],
        &["z"],
        vec![],
    );
    let e = g.check("names").unwrap_err().to_string();
    assert!(e.contains("two nodes are named 'r'"), "{e}");

    let g = graph(
        vec![node("Relu", "r", &["x"], &["y"])],
        &["x"],
        &["y", "w"],
        vec![],
    );
    let e = g.check("outputs").unwrap_err().to_string();
    assert!(e.contains("graph output 'w' is never computed"), "{e}");
}
