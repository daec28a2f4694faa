//! Gradient rules, one file per op family. Each rule reads its node through
//! [`GradCtx`](super::GradCtx) and returns one optional gradient per input.

mod activation;
mod conv;
mod elementwise;
mod linalg;
mod loss;
mod norm;
mod pool;
mod reduce;
mod shape;

use super::Registry;

pub fn register_all(r: &mut Registry) {
    activation::register(r);
    conv::register(r);
    elementwise::register(r);
    linalg::register(r);
    loss::register(r);
    norm::register(r);
    pool::register(r);
    reduce::register(r);
    shape::register(r);
}
