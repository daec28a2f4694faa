//! Finding and loading ONNX Runtime, and making sessions on a chosen device.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`): first from
//! `ORT_DYLIB_PATH`, then from the project's `.venv` (pip `onnxruntime==1.31.1` or
//! `onnxruntime-gpu==1.31.1`), searched from the current folder upwards and beside the
//! executable. Nothing is downloaded.

pub mod checkpoint;
pub mod data;
pub mod tract;
pub mod trainer;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::error::{Error, Result};

pub const INSTALL_HINT: &str = "install it with `tools/setup` (pip install onnxruntime==1.31.1 into .venv; onnxruntime-gpu==1.31.1 for CUDA) or point ORT_DYLIB_PATH at libonnxruntime.so";

/// How the library was found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Found {
    pub path: PathBuf,
    pub source: &'static str,
}

/// Locate `libonnxruntime` without loading it.
pub fn find_library() -> Result<Found> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        if !path.is_file() {
            return Err(Error::Runtime(format!(
                "ORT_DYLIB_PATH is set to '{}', which is not a file; {INSTALL_HINT}",
                path.display()
            )));
        }
        return Ok(Found {
            path,
            source: "ORT_DYLIB_PATH",
        });
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    for root in roots {
        if let Some(path) = venv_library(&root.join(".venv")) {
            return Ok(Found {
                path,
                source: ".venv",
            });
        }
    }
    Err(Error::Runtime(format!(
        "libonnxruntime was not found (ORT_DYLIB_PATH is unset and no .venv with onnxruntime was found from the current folder upwards); {INSTALL_HINT}"
    )))
}

fn venv_library(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pys: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python"))
        })
        .collect();
    pys.sort();
    for py in pys {
        let capi = py.join("site-packages/onnxruntime/capi");
        let Ok(rd) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut libs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("libonnxruntime.so")
                        || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
                })
            })
            .collect();
        libs.sort();
        if let Some(l) = libs.pop() {
            return Some(l);
        }
    }
    None
}

/// The loaded runtime: one ORT environment per process.
pub struct Runtime {
    pub env: ort::environment::Environment,
    pub found: Found,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Load ONNX Runtime once per process.
pub fn runtime() -> Result<&'static Runtime> {
    RUNTIME
        .get_or_init(|| {
            let found = find_library().map_err(|e| e.to_string())?;
            let builder = ort::init_from(&found.path).map_err(|e| {
                format!(
                    "ONNX Runtime: could not load '{}': {e}; {INSTALL_HINT}",
                    found.path.display()
                )
            })?;
            let env = builder
                .with_name("regraft")
                .build()
                .map_err(|e| format!("ONNX Runtime: could not create the environment: {e}"))?;
            Ok(Runtime { env, found })
        })
        .as_ref()
        .map_err(|e| Error::msg(e.clone()))
}

/// Where a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(i)) if i >= 0 => Ok(Device::Cuda(i)),
                _ => Err(format!(
                    "unknown device '{s}' (expected cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Session options regraft uses.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 lets ORT decide.
    pub threads: usize,
    pub optimize: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            threads: 0,
            optimize: true,
        }
    }
}

/// A session for a serialized model. `--device cuda` fails if the CUDA EP cannot be
/// registered; it never falls back to the CPU.
pub fn session(model_bytes: &[u8], opts: &SessionOptions) -> Result<Session> {
    let rt = runtime()?;
    let mut b = Session::builder(&rt.env)?;
    b = b
        .with_optimization_level(if opts.optimize {
            GraphOptimizationLevel::All
        } else {
            GraphOptimizationLevel::Disable
        })
        .map_err(|e| Error::Runtime(e.to_string()))?;
    if opts.threads > 0 {
        b = b
            .with_intra_threads(opts.threads)
            .map_err(|e| Error::Runtime(e.to_string()))?;
    }
    if let Device::Cuda(id) = opts.device {
        if !ort::ep::CUDA::is_available().unwrap_or(false) {
            return Err(Error::Runtime(format!(
                "--device {}: the loaded library '{}' has no CUDA execution provider; install onnxruntime-gpu==1.31.1 (CUDA 13, cuDNN 9) and point ORT_DYLIB_PATH at its libonnxruntime.so",
                opts.device,
                rt.found.path.display()
            )));
        }
        let ep = ort::ep::CUDA::default().with_device_id(id);
        ep.register(&mut b).map_err(|e| {
            Error::Runtime(format!(
                "--device {}: the CUDA execution provider failed to start: {e}",
                opts.device
            ))
        })?;
    }
    b.commit_from_memory(model_bytes)
        .map_err(|e| Error::Runtime(e.to_string()))
}

/// Execution providers the loaded library was built with.
pub fn available_providers() -> Result<Vec<&'static str>> {
    runtime()?;
    let mut out = vec![];
    type Probe = fn() -> ort::Result<bool>;
    let checks: [(&str, Probe); 2] = [
        ("CPUExecutionProvider", ort::ep::CPU::is_available),
        ("CUDAExecutionProvider", ort::ep::CUDA::is_available),
    ];
    for (name, f) in checks {
        if f().unwrap_or(false) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Run an inference session on a dataset in batches; returns the first output
/// (flattened) and its per-sample width. The model's only input gets the samples.
pub fn predict(
    sess: &mut Session,
    ds: &data::Dataset,
    batch: usize,
    output: Option<&str>,
) -> Result<(Vec<f32>, usize)> {
    let input = sess
        .inputs()
        .first()
        .map(|i| i.name().to_string())
        .ok_or_else(|| Error::msg("the model has no input"))?;
    let out_name = match output {
        Some(o) => o.to_string(),
        None => sess
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| Error::msg("the model has no output"))?,
    };
    let idx: Vec<usize> = (0..ds.len()).collect();
    let (mut all, mut width) = (Vec::new(), 0);
    for chunk in idx.chunks(batch.max(1)) {
        let (x, shape, _) = ds.batch(chunk);
        let t = ort::value::Tensor::from_array((shape, x))?;
        let outs = sess.run(ort::inputs![input.as_str() => t])?;
        let (s, v) = outs[out_name.as_str()].try_extract_tensor::<f32>()?;
        width = s.iter().skip(1).map(|&d| d as usize).product();
        all.extend_from_slice(v);
    }
    Ok((all, width))
}
