//! Loading and saving ONNX models.
//!
//! - The file is memory-mapped and decoded from a `Bytes` view of the map, so tensor
//!   payloads (`raw_data`) are slices of the map, never copies.
//! - Weights in external data files are memory-mapped the same way and attached to their
//!   tensors, so a model over 2 GiB loads without holding its weights twice.
//! - Saving encodes straight into the file (payloads go from their `Bytes` to the file, never
//!   through a second in-memory copy of the model) and writes every file atomically
//!   (temporary file in the same folder, then rename).
//!   A model whose weights exceed what one protobuf message can hold is written with its
//!   large tensors in an external data file beside it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;

use crate::error::{Context, Error, Result};
use crate::proto::{
    DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto, attribute_proto,
};

/// Operator domains regraft understands (besides model-local function domains).
pub const KNOWN_DOMAINS: &[&str] = &[
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.microsoft",
];

/// IR version regraft writes: IR 10 covers opsets up to 22 and loads on ORT 1.31.
pub const IR_VERSION: i64 = 10;

/// Above this many bytes of tensor data, `External::Auto` moves weights out of the
/// protobuf (which is limited to 2 GiB).
const AUTO_EXTERNAL_BYTES: u64 = 1_800_000_000;
/// Tensors smaller than this stay inline even when weights go to an external file.
const EXTERNAL_MIN_BYTES: usize = 1024;
const EXTERNAL_ALIGN: u64 = 4096;

fn map_file(path: &Path) -> Result<Bytes> {
    let f = std::fs::File::open(path).file_ctx(path)?;
    let meta = f.metadata().file_ctx(path)?;
    if meta.is_dir() {
        return Err(Error::file(path, "is a folder, not a file"));
    }
    let len = meta.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; regraft never writes to files it has mapped (every
    // write goes to a new file that is renamed into place).
    let map = unsafe { memmap2::Mmap::map(&f) }.file_ctx(path)?;
    Ok(Bytes::from_owner(map))
}

/// Decode a model from bytes; `label` names the source in errors.
pub fn decode_model(bytes: Bytes, label: &Path) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::file(label, "the file is empty, not an ONNX model"));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        Error::file(
            label,
            format!("not a valid ONNX model (the protobuf does not decode: {e}); is the file truncated or of another format?"),
        )
    })?;
    let Some(graph) = model.graph.as_ref() else {
        return Err(Error::file(label, "not an ONNX model: it has no graph"));
    };
    if model.ir_version() <= 0 || (graph.node.is_empty() && graph.output.is_empty()) {
        return Err(Error::file(
            label,
            "not an ONNX model: no IR version, nodes or outputs were found",
        ));
    }
    check_domains(&model).map_err(|e| e.in_file(label))?;
    Ok(model)
}

/// Load a model and attach its external data.
pub fn load_model(path: impl AsRef<Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    let mut model = decode_model(bytes, path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut maps: HashMap<PathBuf, Bytes> = HashMap::new();
    if let Some(g) = model.graph.as_mut() {
        attach_external_graph(g, &dir, &mut maps).map_err(|e| e.in_file(path))?;
    }
    Ok(model)
}

fn attach_external_graph(
    g: &mut GraphProto,
    dir: &Path,
    maps: &mut HashMap<PathBuf, Bytes>,
) -> Result<()> {
    for t in g.initializer.iter_mut() {
        attach_external(t, dir, maps)?;
    }
    for n in g.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                attach_external(t, dir, maps)?;
            }
            if let Some(sub) = a.g.as_mut() {
                attach_external_graph(sub, dir, maps)?;
            }
            for sub in a.graphs.iter_mut() {
                attach_external_graph(sub, dir, maps)?;
            }
        }
    }
    Ok(())
}

fn attach_external(
    t: &mut TensorProto,
    dir: &Path,
    maps: &mut HashMap<PathBuf, Bytes>,
) -> Result<()> {
    if t.data_location() != DataLocation::External {
        return Ok(());
    }
    let name = t.name().to_string();
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == k)
            .map(|e| e.value().to_string())
    };
    let location = get("location").ok_or_else(|| {
        Error::msg(format!(
            "initializer '{name}' is marked external but names no location"
        ))
    })?;
    let rel = Path::new(&location);
    if !is_inside(rel) {
        return Err(Error::msg(format!(
            "initializer '{name}': external data location '{location}' must be a relative path inside the model's folder"
        )));
    }
    let file = dir.join(rel);
    let parse = |k: &str| -> Result<Option<u64>> {
        get(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::msg(format!(
                        "initializer '{name}': external data {k} '{v}' is not a number"
                    ))
                })
            })
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let expected = crate::proto::nbytes(t);
    let length = parse("length")?.unwrap_or(expected);
    if !maps.contains_key(&file) {
        if !file.is_file() {
            return Err(Error::msg(format!(
                "initializer '{name}' refers to the external data file '{}', which does not exist",
                file.display()
            )));
        }
        maps.insert(file.clone(), map_file(&file)?);
    }
    let data = &maps[&file];
    let end = offset.saturating_add(length);
    if end > data.len() as u64 {
        return Err(Error::msg(format!(
            "initializer '{name}': external data file '{}' holds {} bytes, the tensor needs bytes {offset}..{end} (is the file truncated?)",
            file.display(),
            data.len()
        )));
    }
    if length != expected {
        return Err(Error::msg(format!(
            "initializer '{name}': external data length {length} does not match its shape ({expected} bytes)"
        )));
    }
    t.raw_data = Some(data.slice(offset as usize..end as usize));
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Whether an external data location stays inside the model's folder, as ONNX requires.
fn is_inside(rel: &Path) -> bool {
    !rel.as_os_str().is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Every node's domain must be one regraft knows, or a model-local function's.
fn check_domains(model: &ModelProto) -> Result<()> {
    let local: Vec<(&str, &str)> = model
        .functions
        .iter()
        .map(|f| (f.domain(), f.name()))
        .collect();
    let check = |n: &crate::proto::NodeProto| -> Result<()> {
        let d = n.domain();
        if KNOWN_DOMAINS.contains(&d)
            || local.iter().any(|&(fd, fnm)| fd == d && fnm == n.op_type())
        {
            return Ok(());
        }
        Err(Error::node(
            crate::proto::NodeExt::describe(n),
            format!(
                "unknown operator domain '{d}' (known: ai.onnx, ai.onnx.ml, com.microsoft, and the model's own functions)"
            ),
        ))
    };
    fn walk(g: &GraphProto, check: &dyn Fn(&crate::proto::NodeProto) -> Result<()>) -> Result<()> {
        for n in &g.node {
            check(n)?;
            for a in &n.attribute {
                if a.r#type() == attribute_proto::AttributeType::Graph
                    && let Some(sub) = &a.g
                {
                    walk(sub, check)?;
                }
                for sub in &a.graphs {
                    walk(sub, check)?;
                }
            }
        }
        Ok(())
    }
    if let Some(g) = &model.graph {
        walk(g, &check)?;
    }
    for f in &model.functions {
        for n in &f.node {
            check(n)?;
        }
    }
    Ok(())
}

/// Where a saved model's tensor data goes.
#[derive(Clone, Debug, Default)]
pub enum External {
    /// Inline, unless the weights are too large for one protobuf message.
    #[default]
    Auto,
    /// Always inline (fails for models over 2 GiB).
    Never,
    /// Tensors of 1 KiB and more go to this file, relative to the model's folder.
    To(String),
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, flushed, then
/// renamed over the target. A failure leaves whatever was at `path` untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).file_ctx(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".regraft-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .file_ctx(&dir)?;
    write(tmp.as_file_mut()).file_ctx(path)?;
    tmp.as_file_mut().flush().file_ctx(path)?;
    tmp.as_file().sync_all().file_ctx(path)?;
    // Temporary files are created private (0600); what regraft writes is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .file_ctx(path)?;
    }
    tmp.persist(path)
        .map_err(|e| Error::file(path, e.error.to_string()))?;
    Ok(())
}

/// Save a model. The IR version is set to [`IR_VERSION`] unless the model already
/// declares a lower, nonzero one, so that ORT 1.31 loads everything regraft writes.
pub fn save_model(model: &ModelProto, path: impl AsRef<Path>, external: &External) -> Result<()> {
    let path = path.as_ref();
    // Cloned only when something must change (tensor payloads are reference-counted).
    let mut m = std::borrow::Cow::Borrowed(model);
    if m.ir_version() <= 0 || m.ir_version() > IR_VERSION {
        m.to_mut().ir_version = Some(IR_VERSION);
    }
    let total: u64 = m
        .graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len() as u64))
                .sum()
        })
        .unwrap_or(0);
    let data_file = match external {
        External::To(f) => Some(f.clone()),
        External::Auto if total > AUTO_EXTERNAL_BYTES => Some(format!(
            "{}.data",
            path.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model.onnx".into())
        )),
        _ => None,
    };
    if let Some(rel) = data_file {
        if !is_inside(Path::new(&rel)) {
            return Err(Error::file(
                path,
                format!(
                    "external data file '{rel}' must be a relative path inside the model's folder"
                ),
            ));
        }
        let data_path = path.parent().unwrap_or(Path::new("")).join(&rel);
        let m = m.to_mut();
        let Some(graph) = m.graph.as_mut() else {
            return Err(Error::file(path, "the model has no graph to save"));
        };
        let mut chunks: Vec<(u64, Bytes)> = Vec::new();
        let mut offset = 0u64;
        for t in graph.initializer.iter_mut() {
            let Some(raw) = t
                .raw_data
                .as_ref()
                .filter(|r| r.len() >= EXTERNAL_MIN_BYTES)
            else {
                continue;
            };
            offset = offset.div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
            let raw = raw.clone();
            let len = raw.len() as u64;
            t.external_data = vec![
                kv("location", &rel),
                kv("offset", &offset.to_string()),
                kv("length", &len.to_string()),
            ];
            t.data_location = Some(DataLocation::External as i32);
            t.raw_data = None;
            chunks.push((offset, raw));
            offset += len;
        }
        write_atomic(&data_path, |f| {
            let mut pos = 0u64;
            let zeros = [0u8; EXTERNAL_ALIGN as usize];
            for (off, raw) in &chunks {
                f.write_all(&zeros[..(off - pos) as usize])?;
                f.write_all(raw)?;
                pos = off + raw.len() as u64;
            }
            Ok(())
        })?;
    } else if total > 2_000_000_000 {
        return Err(Error::file(
            path,
            format!(
                "{total} bytes of weights do not fit in one protobuf message (2 GiB); save with external data"
            ),
        ));
    }
    write_atomic(path, |f| {
        let mut sink = FileSink::new(f);
        m.encode(&mut sink)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        sink.finish()
    })
}

/// A [`BufMut`] that prost encodes into and that writes through to a file: small fields
/// collect in a buffer, tensor payloads go from their `Bytes` (usually the input model's
/// memory map) straight to the file. The bytes are exactly those of `encode_to_vec`, but
/// the encoded model, weights included, is never held in memory.
struct FileSink<'a> {
    file: &'a mut std::fs::File,
    buf: Vec<u8>,
    /// Bytes handed to the file so far.
    written: usize,
    /// The first write error; later writes are skipped and [`FileSink::finish`] reports it.
    err: Option<std::io::Error>,
}

impl<'a> FileSink<'a> {
    const CAPACITY: usize = 256 * 1024;

    fn new(file: &'a mut std::fs::File) -> FileSink<'a> {
        FileSink {
            file,
            buf: Vec::with_capacity(Self::CAPACITY),
            written: 0,
            err: None,
        }
    }

    fn write(&mut self, data: &[u8]) {
        if self.err.is_none()
            && let Err(e) = self.file.write_all(data)
        {
            self.err = Some(e);
        }
        self.written += data.len();
    }

    fn flush_buf(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.write(&buf);
        self.buf = buf;
        self.buf.clear();
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf();
        self.err.map_or(Ok(()), Err)
    }
}

// SAFETY: `chunk_mut` hands out the buffer's spare capacity, and `advance_mut` only
// extends the buffer's length over bytes the caller has initialised in that chunk.
unsafe impl BufMut for FileSink<'_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.written - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advance_mut past the chunk");
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity (BufMut's contract).
        unsafe { self.buf.set_len(len) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() <= self.buf.capacity() - self.buf.len() {
            self.buf.extend_from_slice(src);
        } else {
            self.flush_buf();
            if src.len() >= Self::CAPACITY {
                self.write(src);
            } else {
                self.buf.extend_from_slice(src);
            }
        }
    }

    fn put_u8(&mut self, n: u8) {
        self.put_slice(&[n]);
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            src.advance(n);
        }
    }
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DataType, GraphProto, NodeProto, make_node, tensor_raw};

    /// The streaming encoder writes exactly the bytes of `encode_to_vec`: payloads larger
    /// and smaller than its buffer, and enough small fields to fill the buffer many times.
    #[test]
    fn saved_bytes_equal_encode_to_vec() {
        let big: Vec<u8> = (0..3 * FileSink::CAPACITY + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut g = GraphProto {
            name: Some("g".into()),
            ..Default::default()
        };
        g.initializer.push(tensor_raw(
            "big",
            DataType::Uint8,
            &[big.len() as i64],
            Bytes::from(big),
        ));
        g.initializer.push(tensor_raw(
            "small",
            DataType::Uint8,
            &[3],
            Bytes::from_static(&[1, 2, 3]),
        ));
        g.node = (0..20_000)
            .map(|i| {
                make_node(
                    "Relu",
                    &format!("n{i}"),
                    &[&format!("v{i}")],
                    &[&format!("v{}", i + 1)],
                    vec![],
                )
            })
            .collect::<Vec<NodeProto>>();
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            graph: Some(g),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        save_model(&model, &path, &External::Never).unwrap();
        assert!(model.encoded_len() > 4 * FileSink::CAPACITY);
        assert!(std::fs::read(&path).unwrap() == model.encode_to_vec());
    }
}
