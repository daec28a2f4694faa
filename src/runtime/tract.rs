//! tract-onnx, the independent second runtime: exported inference models must give the
//! same outputs on it as on ONNX Runtime.

use tract_onnx::prelude::*;

use crate::error::{Error, Result};

/// Run a model with one float input of the given shape; returns every output, flattened.
pub fn run(model_bytes: &[u8], x: &[f32], shape: &[usize]) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
    let err = |e: TractError| Error::Runtime(format!("tract: {e:#}"));
    let model = tract_onnx::onnx()
        .model_for_read(&mut &model_bytes[..])
        .map_err(err)?
        .with_input_fact(0, f32::fact(shape).into())
        .map_err(err)?
        .into_optimized()
        .map_err(err)?
        .into_runnable()
        .map_err(err)?;
    let input = Tensor::from_shape(shape, x).map_err(err)?;
    let outs = model.run(tvec!(input.into())).map_err(err)?;
    outs.iter()
        .map(|t| {
            let a = t.to_plain_array_view::<f32>().map_err(err)?;
            Ok((a.shape().to_vec(), a.iter().copied().collect()))
        })
        .collect()
}
