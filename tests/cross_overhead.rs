//! Issue #6, item 3: the overhead of cross-noise per training step, the amortized
//! validation steps included. Not a test: a benchmark, run by tools/bench/cross_reg
//! (`cargo test --release --test cross_overhead -- --ignored --nocapture`), settings from
//! the environment:
//!
//!   CROSS_BENCH_CASES=mlp:128,cnn:64  model:batch (models/mlp.onnx, models/cnn.onnx)
//!   CROSS_BENCH_THREADS=1             intra-op threads of every session
//!   CROSS_BENCH_BLOCKS=40             timed blocks per variant (after 3 warm-up blocks)
//!   CROSS_BENCH_K=8 CROSS_BENCH_EVERY=10
//!
//! Both variants run through regraft's own trainer (`Trainer::step_with_extras` and
//! `Trainer::val_step`, exactly what `regraft train` runs per step, with the same
//! default recipe: SGD with Nesterov momentum, lr 0.05), on the same batches of the
//! first 1792 rows of tests/data/digits.npz. A block is `every` training steps, so the
//! cross-noise block contains exactly one validation step (K draws of ceil(batch/K)
//! samples of tests/data/digits_val.npz, the default validation batch). The two
//! variants alternate block by block (which goes first alternates too). Per block it
//! records the wall time, the calling thread's CPU time (with one intra-op thread ONNX
//! Runtime computes on the calling thread; time spent waiting for a core on a shared
//! machine is not counted) and the process's CPU time (all threads: the trainer draws
//! the next step's noise on a worker thread while ONNX Runtime runs, so the thread CPU
//! time leaves the draws out and the process CPU time counts them). Prints one JSON line
//! per case: medians in ms per training step and the median of the per-pair ratios.

mod common;

use std::time::Instant;

use regraft::io::load_model;
use regraft::regularizers::{CrossNoise, Regularizer};
use regraft::runtime::SessionOptions;
use regraft::runtime::data::load_npz;
use regraft::runtime::trainer::{Spec, Trainer};
use regraft::train::artifacts::build;
use regraft::train::recipe::Recipe;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU time of the calling thread.
fn thread_cpu() -> f64 {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (every thread: also the trainer's noise worker).
fn process_cpu() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn trainer(model: &str, recipe: &Recipe, threads: usize) -> (Trainer, Option<usize>) {
    let m = load_model(common::root().join(model)).expect("model loads");
    let art = build(&m, recipe).expect("artifacts build");
    let val_batch = art
        .val
        .as_ref()
        .map(|v| v.batch.unwrap_or(recipe.batch_size));
    let spec = Spec::from_artifacts(&art, true);
    let opts = SessionOptions {
        threads,
        ..Default::default()
    };
    let mut t = Trainer::new(spec, &opts).expect("trainer");
    t.set_seed(recipe.seed);
    (t, val_batch)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
#[ignore = "benchmark: tools/bench/cross_reg runs it"]
fn cross_noise_overhead_per_step() {
    let threads: usize = env("CROSS_BENCH_THREADS", "1").parse().unwrap();
    let blocks: usize = env("CROSS_BENCH_BLOCKS", "40").parse().unwrap();
    let k: usize = env("CROSS_BENCH_K", "8").parse().unwrap();
    let every: usize = env("CROSS_BENCH_EVERY", "10").parse().unwrap();
    let all = load_npz(&common::root().join("tests/data/digits.npz"), false).unwrap();
    let data = all.subset(&(0..1792).collect::<Vec<_>>());
    let val = load_npz(&common::root().join("tests/data/digits_val.npz"), false).unwrap();
    for case in env("CROSS_BENCH_CASES", "mlp:128,cnn:64").split(',') {
        let (name, batch) = case.split_once(':').expect("model:batch");
        let batch: usize = batch.parse().unwrap();
        let model = format!("models/{name}.onnx");
        let base_recipe = Recipe {
            batch_size: batch,
            ..Default::default()
        };
        let cross_recipe = Recipe {
            regularizer: Regularizer::CrossNoise(CrossNoise {
                k,
                every,
                ..Default::default()
            }),
            ..base_recipe.clone()
        };
        let (mut base, _) = trainer(&model, &base_recipe, threads);
        let (mut cross, vb) = trainer(&model, &cross_recipe, threads);
        let vb = vb.expect("cross-noise has a validation step");
        let nb = data.len() / batch;
        let nvb = val.len() / vb;
        let mut step = [0usize; 2];
        let mut vstep = 0usize;
        let mut val_cpu: Vec<f64> = vec![];
        // One block: `every` training steps (and for cross-noise the validation step
        // that follows the `every`-th). Returns (thread CPU, process CPU, wall) seconds.
        let mut block = |which: usize, base: &mut Trainer, cross: &mut Trainer| -> [f64; 3] {
            let (c0, p0, w0) = (thread_cpu(), process_cpu(), Instant::now());
            for _ in 0..every {
                let i = step[which] % nb;
                let idx: Vec<usize> = (i * batch..(i + 1) * batch).collect();
                let (x, shape, y) = data.batch(&idx);
                step[which] += 1;
                let t = if which == 0 { &mut *base } else { &mut *cross };
                t.step_with_extras(x, &shape, &y, 0.05, step[which])
                    .expect("training step");
            }
            if which == 1 {
                let j = vstep % nvb;
                vstep += 1;
                let idx: Vec<usize> = (j * vb..(j + 1) * vb).collect();
                let (x, shape, y) = val.batch(&idx);
                let c = thread_cpu();
                cross.val_step(x, &shape, &y).expect("validation step");
                val_cpu.push((thread_cpu() - c) * 1e3);
            }
            [
                thread_cpu() - c0,
                process_cpu() - p0,
                w0.elapsed().as_secs_f64(),
            ]
        };
        for _ in 0..3 {
            block(0, &mut base, &mut cross);
            block(1, &mut base, &mut cross);
        }
        // [clock][variant]: per-step ms; ratios[clock]: per block pair.
        let mut ms: [[Vec<f64>; 2]; 3] = Default::default();
        let mut ratios: [Vec<f64>; 3] = Default::default();
        for b in 0..blocks {
            let order = if b % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut got = [[0.0; 3]; 2];
            for w in order {
                got[w] = block(w, &mut base, &mut cross);
            }
            for c in 0..3 {
                for w in 0..2 {
                    ms[c][w].push(got[w][c] * 1e3 / every as f64);
                }
                ratios[c].push(got[1][c] / got[0][c]);
            }
        }
        let [mut cpu, mut pcpu, mut wall] = ms;
        let [mut rc, mut rp, mut rw] = ratios;
        let out = serde_json::json!({
            "case": name,
            "model": model,
            "batch": batch,
            "val_batch": vb,
            "k": k,
            "every": every,
            "threads": threads,
            "blocks": blocks,
            "cpu_ms_per_step": {"baseline": median(&mut cpu[0]), "cross_noise": median(&mut cpu[1])},
            "process_cpu_ms_per_step": {"baseline": median(&mut pcpu[0]), "cross_noise": median(&mut pcpu[1])},
            "wall_ms_per_step": {"baseline": median(&mut wall[0]), "cross_noise": median(&mut wall[1])},
            "val_step_cpu_ms": median(&mut val_cpu),
            "ratio_cpu": median(&mut rc),
            "ratio_process_cpu": median(&mut rp),
            "ratio_wall": median(&mut rw),
        });
        println!("CROSS_BENCH {out}");
    }
}
