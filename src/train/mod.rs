//! Training-graph assembly: loss heads, optimizers, and the step/eval artifacts.

pub mod loss;
pub mod grad;
