//! One error type for the whole crate. Every variant carries the context a user needs to
//! find the fault: the file, the node and op, the rule, or the flag.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, parsed or written.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    /// A node of a graph is at fault (unsupported op, bad attribute, ...).
    #[error("{node}: {msg}")]
    Node { node: String, msg: String },

    /// A graph failed its validity check after a pass.
    #[error("invalid graph after {pass}: {msg}")]
    Invalid { pass: String, msg: String },

    /// A command-line flag or recipe entry is at fault.
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },

    /// ONNX Runtime could not be found, loaded or run.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn node(node: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Node {
            node: node.into(),
            msg: msg.into(),
        }
    }
    pub fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag: flag.into(),
            msg: msg.into(),
        }
    }
    /// Prefix the error with the file it concerns, unless it already names one.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            e @ Error::File { .. } => e,
            e => Error::file(path, e.to_string()),
        }
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

/// Attach context to errors of any type.
pub trait Context<T> {
    fn file_ctx(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn file_ctx(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, e.to_string()))
    }
}
