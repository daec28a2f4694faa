//! The command line: one file per subcommand; this file parses and dispatches.

mod compare;
mod doctor;
pub mod eval;
mod export;
mod grad;
mod inspect;
mod recipe_flags;
mod rewrite;
pub mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "regraft",
    version,
    about = "Graft regularization into ONNX training graphs, train them on ONNX Runtime, export calibrated models."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inputs, outputs, opsets, op histogram, parameters and buffers of a model.
    Inspect(inspect::Args),
    /// Which ONNX Runtime library is found and which execution providers it offers.
    Doctor(doctor::Args),
    /// Add a loss head and the backward graph (standard ONNX ops only).
    Grad(grad::Args),
    /// Write train_step.onnx, eval.onnx and the initial state for a model.
    Rewrite(rewrite::Args),
    /// Train a model (or a rewrite folder) on ONNX Runtime, CPU or CUDA.
    Train(train::Args),
    /// Export a calibrated inference model from a run.
    Export(export::Args),
    /// Top-1, Top-5, NLL, NLL variance, ECE and Brier of a model or run on a dataset.
    Eval(eval::Args),
    /// Compare runs in the inverse-rate paper's table format, with win counts.
    Compare(compare::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Grad(a) => grad::run(a),
        Command::Rewrite(a) => rewrite::run(a),
        Command::Train(a) => train::run(a),
        Command::Export(a) => export::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Compare(a) => compare::run(a),
    }
}

/// Write a command's output to stdout. A reader that stops early (`regraft inspect m.onnx
/// | head`) ends the output quietly; `println!` would panic on the closed pipe.
pub(crate) fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::msg(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// Parse arguments, run, and turn errors into a one-line message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
