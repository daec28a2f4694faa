//! Datasets: `.npz` files holding `x` (features, float) and `y` (int class labels, or
//! float regression targets). Checked before training starts: shapes against the model,
//! labels against the number of classes, and no NaN or infinity in the inputs.

use std::path::Path;

use crate::error::{Error, Result};
use crate::proto::Dim;

/// Labels: class indices or regression targets.
#[derive(Clone, Debug)]
pub enum Labels {
    Classes(Vec<i64>),
    /// Flat targets with their per-sample shape.
    Targets(Vec<f32>, Vec<usize>),
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Vec<f32>,
    /// Shape of one sample.
    pub sample_shape: Vec<usize>,
    pub y: Labels,
}

impl Dataset {
    pub fn len(&self) -> usize {
        match &self.y {
            Labels::Classes(v) => v.len(),
            Labels::Targets(v, s) => v.len() / s.iter().product::<usize>().max(1),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn sample_size(&self) -> usize {
        self.sample_shape.iter().product()
    }
    /// Gather the samples at `idx` into one batch: (x, x shape, labels).
    pub fn batch(&self, idx: &[usize]) -> (Vec<f32>, Vec<usize>, Labels) {
        let s = self.sample_size();
        let mut x = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            x.extend_from_slice(&self.x[i * s..(i + 1) * s]);
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.sample_shape);
        let y = match &self.y {
            Labels::Classes(v) => Labels::Classes(idx.iter().map(|&i| v[i]).collect()),
            Labels::Targets(v, ts) => {
                let k: usize = ts.iter().product();
                let mut out = Vec::with_capacity(idx.len() * k);
                for &i in idx {
                    out.extend_from_slice(&v[i * k..(i + 1) * k]);
                }
                Labels::Targets(out, ts.clone())
            }
        };
        (x, shape, y)
    }
    /// A subset by index.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let (x, shape, y) = self.batch(idx);
        Dataset {
            x,
            sample_shape: shape[1..].to_vec(),
            y,
        }
    }
}

fn read_array(
    path: &Path,
    archive: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
) -> Result<(Vec<u64>, String)> {
    let f = archive
        .by_name(name)
        .map_err(|e| Error::file(path, format!("cannot read array '{name}': {e}")))?
        .ok_or_else(|| {
            Error::file(
                path,
                format!("has no array '{name}' (a dataset needs 'x' and 'y')"),
            )
        })?;
    Ok((
        f.shape().to_vec(),
        f.dtype().descr().trim_matches('\'').to_string(),
    ))
}

macro_rules! read_as {
    ($path:expr, $ar:expr, $name:expr, $t:ty) => {
        $ar.by_name($name)
            .ok()
            .flatten()
            .ok_or_else(|| Error::file($path, format!("has no array '{}'", $name)))?
            .into_vec::<$t>()
            .map_err(|e| Error::file($path, format!("array '{}': {e}", $name)))?
    };
}

/// Read the float32 or float64 array `name` (dtype `dt`) as f32; `need` completes the
/// error for another dtype.
fn read_floats(
    path: &Path,
    ar: &mut npyz::npz::NpzArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    dt: &str,
    need: &str,
) -> Result<Vec<f32>> {
    Ok(match dt {
        "<f4" => read_as!(path, ar, name, f32),
        "<f8" => read_as!(path, ar, name, f64)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => {
            return Err(Error::file(
                path,
                format!("array '{name}' has dtype {other}; {need}"),
            ));
        }
    })
}

/// Load a dataset; `float_labels` reads `y` as regression targets.
pub fn load_npz(path: &Path, float_labels: bool) -> Result<Dataset> {
    let mut ar = npyz::npz::NpzArchive::open(path)
        .map_err(|e| Error::file(path, format!("not a readable .npz file: {e}")))?;
    let (xs, xdt) = read_array(path, &mut ar, "x")?;
    let (ys, ydt) = read_array(path, &mut ar, "y")?;
    let x = read_floats(path, &mut ar, "x", &xdt, "expected float32 or float64")?;
    if xs.is_empty() {
        return Err(Error::file(path, "array 'x' must have a sample axis"));
    }
    let n = xs[0] as usize;
    if ys.first().copied() != Some(n as u64) {
        return Err(Error::file(
            path,
            format!("'x' has {n} samples but 'y' has shape {ys:?}"),
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        let s: usize = xs[1..].iter().product::<u64>() as usize;
        return Err(Error::file(
            path,
            format!(
                "'x' holds a non-finite value ({}) in sample {}",
                x[i],
                i / s.max(1)
            ),
        ));
    }
    let y = if float_labels {
        let v = read_floats(path, &mut ar, "y", &ydt, "MSE needs float targets")?;
        if v.iter().any(|v| !v.is_finite()) {
            return Err(Error::file(path, "'y' holds a non-finite target"));
        }
        Labels::Targets(v, ys[1..].iter().map(|&d| d as usize).collect())
    } else {
        if ys.len() != 1 {
            return Err(Error::file(
                path,
                format!("'y' must be a vector of class indices, not shape {ys:?}"),
            ));
        }
        Labels::Classes(match ydt.as_str() {
            "<i8" => read_as!(path, ar, "y", i64),
            "<i4" => read_as!(path, ar, "y", i32)
                .into_iter()
                .map(i64::from)
                .collect(),
            other => {
                return Err(Error::file(
                    path,
                    format!("array 'y' has dtype {other}; class labels must be int64 or int32"),
                ));
            }
        })
    };
    Ok(Dataset {
        x,
        sample_shape: xs[1..].iter().map(|&d| d as usize).collect(),
        y,
    })
}

/// Check a dataset against the model's input dims and number of classes.
pub fn validate(
    ds: &Dataset,
    path: &Path,
    input: &str,
    dims: &[Dim],
    classes: Option<i64>,
) -> Result<()> {
    if !dims.is_empty() {
        let want: Vec<Option<i64>> = dims[1..]
            .iter()
            .map(|d| {
                if let Dim::Fixed(v) = d {
                    Some(*v)
                } else {
                    None
                }
            })
            .collect();
        let ok = want.len() == ds.sample_shape.len()
            && want
                .iter()
                .zip(&ds.sample_shape)
                .all(|(w, &h)| w.is_none_or(|w| w == h as i64));
        if !ok {
            let w: Vec<String> = dims[1..].iter().map(|d| d.to_string()).collect();
            return Err(Error::file(
                path,
                format!(
                    "samples have shape {:?}, but the model's input '{input}' takes [N, {}]",
                    ds.sample_shape,
                    w.join(", ")
                ),
            ));
        }
    }
    if let (Labels::Classes(y), Some(c)) = (&ds.y, classes)
        && let Some((i, &bad)) = y.iter().enumerate().find(|&(_, &v)| v < 0 || v >= c)
    {
        return Err(Error::file(
            path,
            format!(
                "label {bad} of sample {i} is out of range: the model has {c} classes (0..{})",
                c - 1
            ),
        ));
    }
    if ds.is_empty() {
        return Err(Error::file(path, "the dataset is empty"));
    }
    Ok(())
}
