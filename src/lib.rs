//! regraft reads ONNX models and training graphs exported from PyTorch, grafts
//! principled regularization into them, builds their backward graph and optimizer update
//! from standard ONNX ops, trains them through ONNX Runtime on CPU or CUDA, and exports
//! calibrated inference models.
//!
//! Every graph regraft writes uses standard ONNX ops only, passes
//! `onnx.checker.check_model(full_check=True)` and runs on a stock ONNX Runtime.

pub mod autodiff;
pub mod cli;
pub mod error;
pub mod export;
pub mod inspect;
pub mod io;
pub mod ir;
pub mod metrics;
pub mod proto;
pub mod regularizers;
pub mod runtime;
pub mod train;

pub use error::{Error, Result};

/// The few names most users of the library need.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::io::{External, load_model, save_model};
    pub use crate::ir::{Builder, Graph, Patch};
}
