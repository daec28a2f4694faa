use std::path::PathBuf;

use crate::error::Result;
use crate::ir::Graph;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let g = Graph::from_model(crate::io::load_model(&a.model)?);
    let r = crate::inspect::inspect(&g);
    if a.json {
        let json = serde_json::to_string_pretty(&r).expect("report serializes");
        super::emit(&format!("{json}\n"))
    } else {
        super::emit(&r.to_string())
    }
}
