use crate::error::Result;
use crate::runtime;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let rt = runtime::runtime()?;
    let eps = runtime::available_providers()?;
    if a.json {
        let v = serde_json::json!({
            "library": rt.found.path,
            "found_via": rt.found.source,
            "execution_providers": eps,
        });
        super::emit(&format!("{v}\n"))
    } else {
        super::emit(&format!(
            "ONNX Runtime: {} (found via {})\nexecution providers: {}\n",
            rt.found.path.display(),
            rt.found.source,
            eps.join(", ")
        ))
    }
}
