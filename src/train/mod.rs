//! Training-graph assembly: loss heads, optimizers, and the step/eval artifacts.

pub mod artifacts;
pub mod grad;
pub mod loss;
pub mod optim;
pub mod recipe;
