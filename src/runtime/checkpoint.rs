//! Checkpoints: the training state (parameters, optimizer slots, buffers) as
//! safetensors, with the position in training in its metadata. Written atomically, so a
//! crash (even `kill -9`) leaves the previous checkpoint intact.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Context, Error, Result};

/// Where training stood when a checkpoint was written.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Epoch in progress (0-based) and the next batch in it.
    pub epoch: usize,
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Running sums of the epoch in progress, so its logged metrics survive a resume.
    pub epoch_loss_sum: f64,
    pub epoch_correct: f64,
    pub epoch_seen: usize,
    /// Running sums of the step diagnostics (`Spec::extras`) over the epoch's steps so
    /// far, and the number of those steps.
    #[serde(default)]
    pub epoch_extra_sums: Vec<f64>,
    #[serde(default)]
    pub epoch_steps: usize,
}

/// Named f32 tensors with their shapes.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub fn save(
    path: &Path,
    tensors: &TensorMap,
    pos: Option<&Position>,
    extra: &[(&str, String)],
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .values()
        .map(|(_, v)| v.iter().flat_map(|f| f.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, (shape, _)), b)| {
            Ok((
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map_err(|e| Error::msg(e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), "regraft".into());
    if let Some(p) = pos {
        meta.insert(
            "position".into(),
            serde_json::to_string(p).expect("position serializes"),
        );
    }
    for (k, v) in extra {
        meta.insert((*k).to_string(), v.clone());
    }
    let buf =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::file(path, e.to_string()))?;
    crate::io::write_atomic(path, |f| std::io::Write::write_all(f, &buf))
}

pub struct Loaded {
    pub tensors: TensorMap,
    pub position: Option<Position>,
    pub metadata: HashMap<String, String>,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let buf = std::fs::read(path).file_ctx(path)?;
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| Error::file(path, format!("not a valid safetensors checkpoint: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&buf).map_err(|e| Error::file(path, e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut tensors = TensorMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::file(
                path,
                format!(
                    "tensor '{name}' is {:?}; regraft checkpoints hold float32",
                    view.dtype()
                ),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    let position = match metadata.get("position") {
        Some(p) => Some(
            serde_json::from_str(p)
                .map_err(|e| Error::file(path, format!("bad position metadata: {e}")))?,
        ),
        None => None,
    };
    Ok(Loaded {
        tensors,
        position,
        metadata,
    })
}
