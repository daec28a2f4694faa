//! The training loop: runs `train_step.onnx` on ONNX Runtime with the training state
//! kept on the device.
//!
//! The state (parameters, optimizer slots, buffers) lives in two sets of device tensors.
//! Two IoBindings are prepared once: one reads set A and writes the `*_new` outputs into
//! set B, the other the reverse, and every step swaps them (ping-pong). Only the batch,
//! the learning rate and the step number travel per step (and with cross-noise the ε
//! draws, made on a worker thread while the previous step runs); no tensor is ever bound
//! as both input and output. The state comes back to the host only for checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::session::{IoBinding, RunOptions};
use ort::value::{DynTensor, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::checkpoint::{self, Position, TensorMap};
use super::data::{Dataset, Labels};
use super::{Device, SessionOptions, session};
use crate::error::{Error, Result};
use crate::train::artifacts::{CORRECT, LABELS, LOSS, LR, PER_SAMPLE, STEP, StateEntry};

/// Everything the loop needs about the artifacts.
pub struct Spec {
    pub train_bytes: Vec<u8>,
    pub eval_bytes: Vec<u8>,
    pub state: Vec<StateEntry>,
    pub input: String,
    pub logits: String,
    pub classification: bool,
    /// Scalar diagnostics fetched each step and averaged per epoch.
    pub extras: Vec<String>,
    /// Cross-regularization: the validation step and its state.
    pub val: Option<ValSpec>,
}

impl Spec {
    /// The loop's view of built artifacts (the graphs encoded once, here).
    pub fn from_artifacts(art: &crate::train::artifacts::Artifacts, classification: bool) -> Spec {
        Spec {
            train_bytes: prost::Message::encode_to_vec(&art.train.to_model()),
            eval_bytes: prost::Message::encode_to_vec(&art.eval.to_model()),
            state: art.state.clone(),
            input: art.input.clone(),
            logits: art.logits.clone(),
            classification,
            extras: art.extras.clone(),
            val: art.val.as_ref().map(|v| ValSpec {
                bytes: prost::Message::encode_to_vec(&v.graph.to_model()),
                state: v.state.clone(),
                every: v.every,
                lr: v.lr,
                batch: v.batch,
            }),
        }
    }
}

/// The validation step of cross-regularization.
pub struct ValSpec {
    pub bytes: Vec<u8>,
    pub state: Vec<StateEntry>,
    pub every: usize,
    pub lr: f32,
    /// Samples per validation step (None: the training batch size).
    pub batch: Option<usize>,
}

/// The ε inputs of a graph with cross-noise sites (`noise.*.eps`, see
/// [`crate::regularizers::noise::Draw::Input`]): filled with fresh N(0, 1) draws before
/// every run, keyed by (seed, graph, step, site) so that draws never depend on anything
/// else (in particular, the training step's draws not on the validation step) and a
/// resumed run draws exactly what an uninterrupted one would.
///
/// Two host buffer sets are used alternately: while ONNX Runtime runs on one, a worker
/// thread draws the next run's noise into the other ([`NoiseFeed::prefetch_during`]), so
/// with a spare core the draws cost no wall time. Keys make this invisible in the values:
/// a run whose draws were not prefetched (the first, a partial batch) draws them itself.
struct NoiseFeed {
    /// Name and dims of each input; the one dynamic dimension (-1) is the batch.
    inputs: Vec<(String, Vec<i64>)>,
    /// Two sets of one host buffer per input, reused while the batch size stays the same.
    bufs: [Vec<Option<(usize, DynTensor)>>; 2],
    /// The set the next run uses ...
    next: usize,
    /// ... and the batch size and key its draws were made for, if they were prefetched.
    ready: Option<(usize, [u64; 3])>,
}

/// Fill each input's buffer with the draws of `key` (site i gets key + [i]).
fn draw_noise(bufs: Vec<&mut [f32]>, key: [u64; 3]) {
    for (i, data) in bufs.into_iter().enumerate() {
        crate::regularizers::noise::fill_normal(data, &[key[0], key[1], key[2], i as u64]);
    }
}

impl NoiseFeed {
    fn of(sess: &Session) -> NoiseFeed {
        let inputs: Vec<(String, Vec<i64>)> = sess
            .inputs()
            .iter()
            .filter(|i| crate::regularizers::noise::is_eps_input(i.name()))
            .filter_map(|i| match i.dtype() {
                ort::value::ValueType::Tensor { shape, .. } => {
                    Some((i.name().to_string(), shape.iter().copied().collect()))
                }
                _ => None,
            })
            .collect();
        let bufs = [
            inputs.iter().map(|_| None).collect(),
            inputs.iter().map(|_| None).collect(),
        ];
        NoiseFeed {
            inputs,
            bufs,
            next: 0,
            ready: None,
        }
    }

    /// The buffers of `set` for a batch of `n` samples, (re)allocated if needed.
    fn buffers(&mut self, set: usize, n: usize) -> Result<Vec<&mut [f32]>> {
        let mut out = Vec::with_capacity(self.inputs.len());
        for ((_, dims), buf) in self.inputs.iter().zip(self.bufs[set].iter_mut()) {
            if buf.as_ref().is_none_or(|(m, _)| *m != n) {
                let shape: Vec<usize> = dims
                    .iter()
                    .map(|&d| if d < 0 { n } else { d as usize })
                    .collect();
                let numel = shape.iter().product();
                *buf = Some((n, host_tensor(&shape, vec![0.0; numel])?));
            }
            let (_, t) = buf.as_mut().expect("allocated");
            out.push(t.try_extract_tensor_mut::<f32>()?.1);
        }
        Ok(out)
    }

    /// Bind this run's noise for a batch of `n` samples, drawing it unless it was
    /// prefetched for exactly this key and batch size.
    fn bind(&mut self, b: &mut IoBinding, n: usize, key: [u64; 3]) -> Result<()> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        let set = self.next;
        let ready = self.ready.take() == Some((n, key));
        let bufs = self.buffers(set, n)?;
        if !ready {
            draw_noise(bufs, key);
        }
        for ((name, _), buf) in self.inputs.iter().zip(&self.bufs[set]) {
            b.bind_input(name, &buf.as_ref().expect("allocated").1)?;
        }
        self.next ^= 1;
        Ok(())
    }

    /// Run `run` while a worker thread draws the noise of the next run (batch `n`,
    /// `key`) into the other buffer set.
    fn prefetch_during<R>(
        &mut self,
        n: usize,
        key: [u64; 3],
        run: impl FnOnce() -> R,
    ) -> Result<R> {
        if self.inputs.is_empty() {
            return Ok(run());
        }
        let bufs = self.buffers(self.next, n)?;
        let (r, drawn) = std::thread::scope(|s| {
            let worker = s.spawn(move || draw_noise(bufs, key));
            let r = run();
            (r, worker.join().is_ok())
        });
        self.ready = drawn.then_some((n, key));
        Ok(r)
    }
}

/// The state of a step graph in two sets of device tensors, and the two bindings that run
/// the graph between them (ping-pong): binding k reads set k and writes the `*_new`
/// outputs into set 1 − k, so no tensor is ever bound as both input and output.
struct StateSets {
    sets: [Vec<DynTensor>; 2],
    bindings: [IoBinding; 2],
    /// Which set holds the current state (and which binding runs next).
    current: usize,
}

impl StateSets {
    /// Allocate both sets for `state` and bind them; `host_outputs` are bound to the CPU.
    fn new(
        sess: &Session,
        state: &[StateEntry],
        alloc: &Allocator,
        host_outputs: &[&str],
    ) -> Result<StateSets> {
        let mut sets: [Vec<DynTensor>; 2] = [vec![], vec![]];
        for set in sets.iter_mut() {
            for e in state {
                set.push(Tensor::<f32>::new(alloc, dims(e))?.upcast());
            }
        }
        let mut bindings = [sess.create_binding()?, sess.create_binding()?];
        let cpu = cpu_mem()?;
        for (k, b) in bindings.iter_mut().enumerate() {
            for (i, e) in state.iter().enumerate() {
                b.bind_input(&e.name, &sets[k][i])?;
                b.bind_output(&e.output, &mut sets[1 - k][i])?;
            }
            for name in host_outputs {
                b.bind_output_to_device(*name, &cpu)?;
            }
        }
        Ok(StateSets {
            sets,
            bindings,
            current: 0,
        })
    }

    /// The tensors of the current state, in the order of the state entries.
    fn current(&self) -> &[DynTensor] {
        &self.sets[self.current]
    }

    /// The binding that runs the next step (reads the current set).
    fn binding(&mut self) -> &mut IoBinding {
        &mut self.bindings[self.current]
    }

    /// After a run: the set it wrote becomes the current one.
    fn swap(&mut self) {
        self.current ^= 1;
    }

    /// Copy host tensors (every entry of `state` must be there, with its shape) into the
    /// current set.
    fn upload(&mut self, state: &[StateEntry], tensors: &TensorMap, device: Device) -> Result<()> {
        for (i, e) in state.iter().enumerate() {
            let (shape, data) = tensors
                .get(&e.name)
                .ok_or_else(|| Error::msg(format!("the checkpoint has no tensor '{}'", e.name)))?;
            let want = dims(e);
            if *shape != want {
                return Err(Error::msg(format!(
                    "checkpoint tensor '{}' has shape {shape:?}, the model needs {want:?}",
                    e.name
                )));
            }
            let dst = &mut self.sets[self.current][i];
            match device {
                Device::Cpu => dst.try_extract_tensor_mut::<f32>()?.1.copy_from_slice(data),
                Device::Cuda(_) => host_tensor(shape, data.clone())?.copy_into(dst)?,
            }
        }
        Ok(())
    }

    /// Add the current state to `out`, on the host.
    fn download(&self, state: &[StateEntry], device: Device, out: &mut TensorMap) -> Result<()> {
        for (e, v) in state.iter().zip(self.current()) {
            let host;
            let v = match device {
                Device::Cpu => v,
                Device::Cuda(_) => {
                    host = v.to(AllocationDevice::CPU, 0)?;
                    &host
                }
            };
            let (shape, data) = v.try_extract_tensor::<f32>()?;
            out.insert(
                e.name.clone(),
                (shape.iter().map(|&d| d as usize).collect(), data.to_vec()),
            );
        }
        Ok(())
    }
}

/// The dims of a state entry.
fn dims(e: &StateEntry) -> Vec<usize> {
    e.dims.iter().map(|&d| d as usize).collect()
}

/// The validation step's session, state and noise.
struct ValRunner {
    spec: ValSpec,
    sess: Session,
    /// Indices of the training state entries the validation graph reads (the weights),
    /// bound from the training step's current set before every validation step.
    reads: Vec<usize>,
    state: StateSets,
    steps: usize,
    noise: NoiseFeed,
}

/// One epoch's metrics, as logged to `metrics.jsonl`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub step: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub samples_per_second: f64,
    pub seconds: f64,
    /// Epoch means of the step's diagnostics (regularizer value, Ĵ, λ*, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub diagnostics: std::collections::BTreeMap<String, f64>,
}

fn cpu_mem() -> Result<MemoryInfo<'static>> {
    Ok(MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )?)
}

fn host_tensor(shape: &[usize], data: Vec<f32>) -> Result<DynTensor> {
    Ok(Tensor::from_array((shape.to_vec(), data))?.upcast())
}

fn labels_tensor(y: &Labels, n: usize) -> Result<DynTensor> {
    Ok(match y {
        Labels::Classes(v) => Tensor::from_array((vec![n], v.clone()))?.upcast(),
        Labels::Targets(v, s) => {
            let mut shape = vec![n];
            shape.extend(s);
            Tensor::from_array((shape, v.clone()))?.upcast()
        }
    })
}

/// The running trainer: sessions, the two state sets and their bindings.
pub struct Trainer {
    spec: Spec,
    train: Session,
    eval: Session,
    device: Device,
    state: StateSets,
    run_opts: RunOptions,
    val: Option<ValRunner>,
    noise: NoiseFeed,
    /// Seed of the noise draws (the recipe's seed; see [`Trainer::set_seed`]).
    seed: u64,
}

impl Trainer {
    pub fn new(mut spec: Spec, opts: &SessionOptions) -> Result<Trainer> {
        let train = session(&spec.train_bytes, opts)?;
        let eval = session(&spec.eval_bytes, opts)?;
        let alloc = match opts.device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(id) => Allocator::new(
                &train,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?,
        };
        let mut host_outputs = vec![LOSS];
        if spec.classification {
            host_outputs.push(CORRECT);
        }
        host_outputs.extend(spec.extras.iter().map(String::as_str));
        let state = StateSets::new(&train, &spec.state, &alloc, &host_outputs)?;
        let val = match spec.val.take() {
            Some(vs) => Some(ValRunner::new(vs, &spec.state, opts, &alloc)?),
            None => None,
        };
        let mut run_opts = RunOptions::new()?;
        if matches!(opts.device, Device::Cuda(_)) {
            run_opts.disable_device_sync()?;
        }
        let noise = NoiseFeed::of(&train);
        let mut t = Trainer {
            noise,
            seed: 0,
            spec,
            train,
            eval,
            device: opts.device,
            state,
            run_opts,
            val,
        };
        let val_state = t.val.as_ref().map_or(&[][..], |v| &v.spec.state[..]);
        let init: TensorMap = t
            .spec
            .state
            .iter()
            .chain(val_state)
            .map(|e| {
                Ok((
                    e.name.clone(),
                    (dims(e), crate::proto::tensor_values::<f32>(&e.init)?),
                ))
            })
            .collect::<Result<_>>()?;
        t.upload(&init)?;
        Ok(t)
    }

    /// Bind the current regularization parameters as inputs of the training step.
    fn bind_reg(&mut self) -> Result<()> {
        let Some(v) = self.val.as_ref() else {
            return Ok(());
        };
        for (i, e) in v.spec.state.iter().enumerate() {
            if e.kind == crate::train::artifacts::StateKind::Param {
                for b in self.state.bindings.iter_mut() {
                    b.bind_input(&e.name, &v.state.current()[i])?;
                }
            }
        }
        Ok(())
    }

    /// Seed the noise draws of cross-noise sites (fit sets it to the recipe's seed).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Whether this run has a validation step.
    pub fn has_val_step(&self) -> bool {
        self.val.is_some()
    }

    /// One validation step on a batch of the validation split: updates the
    /// regularization parameters; returns the validation loss.
    pub fn val_step(&mut self, x: Vec<f32>, xshape: &[usize], y: &Labels) -> Result<f32> {
        let Some(v) = self.val.as_mut() else {
            return Err(Error::msg("this run has no validation step"));
        };
        let n = xshape[0];
        let xt = host_tensor(xshape, x)?;
        let yt = labels_tensor(y, n)?;
        v.steps += 1;
        let lrt: DynTensor = Tensor::from_array((Vec::<usize>::new(), vec![v.spec.lr]))?.upcast();
        let st: DynTensor =
            Tensor::from_array((Vec::<usize>::new(), vec![v.steps as f32]))?.upcast();
        let b = v.state.binding();
        v.noise.bind(b, n, [self.seed, 1, v.steps as u64])?;
        for &i in &v.reads {
            b.bind_input(&self.spec.state[i].name, &self.state.current()[i])?;
        }
        b.bind_input(&self.spec.input, &xt)?;
        b.bind_input(LABELS, &yt)?;
        b.bind_input(crate::train::artifacts::VAL_LR, &lrt)?;
        b.bind_input(crate::train::artifacts::VAL_STEP, &st)?;
        let sess = &mut v.sess;
        let outs = v
            .noise
            .prefetch_during(n, [self.seed, 1, v.steps as u64 + 1], || {
                sess.run_binding(b)
            })??;
        let loss = outs[crate::train::artifacts::VAL_LOSS]
            .try_extract_tensor::<f32>()?
            .1[0];
        drop(outs);
        v.state.swap();
        self.bind_reg()?;
        Ok(loss)
    }

    /// Copy host tensors into the current state set (and the regularization state).
    pub fn upload(&mut self, tensors: &TensorMap) -> Result<()> {
        if let Some(v) = self.val.as_mut() {
            v.state.upload(&v.spec.state, tensors, self.device)?;
        }
        self.bind_reg()?;
        self.state.upload(&self.spec.state, tensors, self.device)
    }

    /// The current state, on the host.
    pub fn download(&self) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        self.state
            .download(&self.spec.state, self.device, &mut out)?;
        if let Some(v) = self.val.as_ref() {
            v.state.download(&v.spec.state, self.device, &mut out)?;
        }
        Ok(out)
    }

    /// The regularization parameters' current values (σ = exp(log σ) for noise layers,
    /// ρ for the norm split), for logging. A per-channel σ is logged as its mean over the
    /// channels (`.sigma`) with its smallest and largest value (`.sigma_min`, `.sigma_max`).
    pub fn reg_values(&self) -> Result<Vec<(String, f64)>> {
        let Some(v) = self.val.as_ref() else {
            return Ok(vec![]);
        };
        let mut out = vec![];
        for (i, e) in v.spec.state.iter().enumerate() {
            if e.kind != crate::train::artifacts::StateKind::Param {
                continue;
            }
            let host = v.state.current()[i].to(AllocationDevice::CPU, 0)?;
            let values = host.try_extract_tensor::<f32>()?.1;
            let x = values[0] as f64;
            if let Some(base) = e.name.strip_suffix(".log_sigma") {
                if values.len() == 1 {
                    out.push((format!("{base}.sigma"), x.exp()));
                    continue;
                }
                let sig = values.iter().map(|&s| (s as f64).exp());
                let mean = sig.clone().sum::<f64>() / values.len() as f64;
                out.push((format!("{base}.sigma"), mean));
                out.push((
                    format!("{base}.sigma_min"),
                    sig.clone().fold(f64::INFINITY, f64::min),
                ));
                out.push((
                    format!("{base}.sigma_max"),
                    sig.fold(f64::NEG_INFINITY, f64::max),
                ));
            } else if let Some(base) = e.name.strip_suffix(".log_lambda") {
                out.push((format!("{base}.lambda_validated"), x.exp()));
            } else {
                out.push((e.name.clone(), x));
            }
        }
        Ok(out)
    }

    /// One optimizer step on a batch; returns (mean loss, correct count).
    pub fn step(
        &mut self,
        x: Vec<f32>,
        xshape: &[usize],
        y: &Labels,
        lr: f32,
        t: usize,
    ) -> Result<(f32, f32)> {
        self.step_with_extras(x, xshape, y, lr, t)
            .map(|(l, c, _)| (l, c))
    }

    /// One optimizer step; also returns the diagnostics named in `Spec::extras`.
    pub fn step_with_extras(
        &mut self,
        x: Vec<f32>,
        xshape: &[usize],
        y: &Labels,
        lr: f32,
        t: usize,
    ) -> Result<(f32, f32, Vec<f32>)> {
        let n = xshape[0];
        let xt = host_tensor(xshape, x)?;
        let yt = labels_tensor(y, n)?;
        let lrt: DynTensor = Tensor::from_array((Vec::<usize>::new(), vec![lr]))?.upcast();
        let st: DynTensor = Tensor::from_array((Vec::<usize>::new(), vec![t as f32]))?.upcast();
        let b = self.state.binding();
        self.noise.bind(b, n, [self.seed, 0, t as u64])?;
        b.bind_input(&self.spec.input, &xt)?;
        b.bind_input(LABELS, &yt)?;
        b.bind_input(LR, &lrt)?;
        b.bind_input(STEP, &st)?;
        let (train, run_opts) = (&mut self.train, &self.run_opts);
        let outs = self
            .noise
            .prefetch_during(n, [self.seed, 0, t as u64 + 1], || {
                train.run_binding_with_options(b, run_opts)
            })??;
        let loss = outs[LOSS].try_extract_tensor::<f32>()?.1[0];
        let correct = if self.spec.classification {
            outs[CORRECT].try_extract_tensor::<f32>()?.1[0]
        } else {
            0.0
        };
        let extras = self
            .spec
            .extras
            .iter()
            .map(|x| Ok(outs[x.as_str()].try_extract_tensor::<f32>()?.1[0]))
            .collect::<Result<Vec<f32>>>()?;
        drop(outs);
        self.state.swap();
        Ok((loss, correct, extras))
    }

    /// Logits and per-sample losses of the eval graph on a dataset, in batches.
    pub fn predict(&mut self, ds: &Dataset, batch: usize) -> Result<(Vec<f32>, usize, Vec<f32>)> {
        let n = ds.len();
        let mut logits = Vec::new();
        let mut losses = Vec::with_capacity(n);
        let mut width = 0;
        let idx: Vec<usize> = (0..n).collect();
        let mut binding = self.eval.create_binding()?;
        for (i, e) in self.spec.state.iter().enumerate() {
            if self.eval.inputs().iter().any(|inp| inp.name() == e.name) {
                binding.bind_input(&e.name, &self.state.current()[i])?;
            }
        }
        if let Some(v) = self.val.as_ref() {
            for (i, e) in v.spec.state.iter().enumerate() {
                if self.eval.inputs().iter().any(|inp| inp.name() == e.name) {
                    binding.bind_input(&e.name, &v.state.current()[i])?;
                }
            }
        }
        let cpu = cpu_mem()?;
        binding.bind_output_to_device(&self.spec.logits, &cpu)?;
        binding.bind_output_to_device(PER_SAMPLE, &cpu)?;
        for chunk in idx.chunks(batch.max(1)) {
            let (x, shape, y) = ds.batch(chunk);
            let xt = host_tensor(&shape, x)?;
            let yt = labels_tensor(&y, chunk.len())?;
            binding.bind_input(&self.spec.input, &xt)?;
            binding.bind_input(LABELS, &yt)?;
            // Outputs are rebound per batch: the last batch can be shorter.
            binding.bind_output_to_device(&self.spec.logits, &cpu)?;
            binding.bind_output_to_device(PER_SAMPLE, &cpu)?;
            let outs = self.eval.run_binding(&binding)?;
            let (ls, lv) = outs[self.spec.logits.as_str()].try_extract_tensor::<f32>()?;
            width = ls.iter().skip(1).map(|&d| d as usize).product();
            logits.extend_from_slice(lv);
            losses.extend_from_slice(outs[PER_SAMPLE].try_extract_tensor::<f32>()?.1);
        }
        Ok((logits, width, losses))
    }
}

impl ValRunner {
    fn new(
        spec: ValSpec,
        train_state: &[StateEntry],
        opts: &SessionOptions,
        alloc: &Allocator,
    ) -> Result<ValRunner> {
        let sess = session(&spec.bytes, opts)?;
        let reads = train_state
            .iter()
            .enumerate()
            .filter(|(_, e)| sess.inputs().iter().any(|i| i.name() == e.name))
            .map(|(i, _)| i)
            .collect();
        let state = StateSets::new(
            &sess,
            &spec.state,
            alloc,
            &[crate::train::artifacts::VAL_LOSS],
        )?;
        let noise = NoiseFeed::of(&sess);
        Ok(ValRunner {
            spec,
            sess,
            reads,
            state,
            steps: 0,
            noise,
        })
    }
}

/// Settings of one training run.
pub struct FitOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub lr: f32,
    pub schedule: crate::train::optim::Schedule,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub progress: bool,
}

/// The batches of one epoch: a permutation that depends only on (seed, epoch), so a
/// resumed run sees exactly the batches an uninterrupted one would.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    idx.shuffle(&mut rng);
    idx
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const METRICS: &str = "metrics.jsonl";

/// Keep the lines of `metrics.jsonl` for the first `done` epochs (all of them already
/// checkpointed) and drop the rest: on a fresh start there is no line to keep, and a
/// resumed run logs again the epochs it redoes. A line cut short by a kill is dropped.
fn truncate_log(path: &Path, done: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::file(path, e.to_string())),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<EpochLog>(l).is_ok_and(|e| e.epoch <= done))
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::io::write_atomic(path, |f| std::io::Write::write_all(f, out.as_bytes()))
}

fn append_log(path: &Path, line: &EpochLog) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::file(path, e.to_string()))?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(line).expect("log serializes")
    )
    .map_err(|e| Error::file(path, e.to_string()))
}

/// Train; returns the epoch logs of this invocation.
pub fn fit(
    t: &mut Trainer,
    train: &Dataset,
    val: Option<&Dataset>,
    o: &FitOptions,
) -> Result<Vec<EpochLog>> {
    if t.has_val_step() && val.is_none() {
        return Err(Error::flag(
            "--val",
            "cross-regularization needs a validation split (--val V.npz or --val-fraction F)",
        ));
    }
    t.set_seed(o.seed);
    // Validation batches for the regularization parameters cycle through the split.
    let mut val_cursor = (0usize, 0usize); // (pass, position)
    let mut val_order: Vec<usize> = vec![];
    let val_every = t.val.as_ref().map(|v| v.spec.every);
    let val_batch = t
        .val
        .as_ref()
        .map_or(o.batch_size, |v| v.spec.batch.unwrap_or(o.batch_size))
        .max(1);
    // Where the validation steps stand after `steps` training steps (one after every
    // `every`-th): their count (Adam's step) and the cursor in the validation split.
    let val_position = |steps: usize, len: usize| -> (usize, (usize, usize)) {
        let done = val_every.map_or(0, |e| steps / e);
        let mut cur = (0usize, 0usize);
        for _ in 0..done {
            let end = (cur.1 + val_batch).min(len);
            cur = if end >= len {
                (cur.0 + 1, 0)
            } else {
                (cur.0, end)
            };
        }
        (done, cur)
    };
    let ckpt = o.run_dir.join(CHECKPOINT);
    let mut pos = Position::default();
    if o.resume {
        if !ckpt.is_file() {
            return Err(Error::flag(
                "--resume",
                format!("no checkpoint at {}", ckpt.display()),
            ));
        }
        let c = checkpoint::load(&ckpt)?;
        t.upload(&c.tensors)?;
        pos = c.position.unwrap_or_default();
        // The validation steps continue where they were: Adam's step count and the cursor
        // in the validation split follow from the number of training steps.
        if let (Some(vs), Some(v)) = (val, t.val.as_mut()) {
            let (done, cur) = val_position(pos.step, vs.len());
            v.steps = done;
            val_cursor = cur;
        }
        eprintln!(
            "resuming at epoch {}, batch {} (step {})",
            pos.epoch + 1,
            pos.batch,
            pos.step
        );
    } else if ckpt.is_file() {
        // A fresh run in a used folder: the old checkpoint belongs to the run whose
        // artifacts were just overwritten; it must not pass for this run's (by --resume
        // or by the message of a failure in the first epoch).
        std::fs::remove_file(&ckpt).map_err(|e| Error::file(&ckpt, e.to_string()))?;
    }
    let metrics = o.run_dir.join(METRICS);
    truncate_log(&metrics, pos.epoch)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second handler cannot be installed (e.g. in tests); then Ctrl-C kills as usual.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let n = train.len();
    let bs = o.batch_size;
    let steps_per_epoch = n.div_ceil(bs);
    let total = steps_per_epoch * o.epochs;
    let mut logs = vec![];
    let kept = || {
        if ckpt.is_file() {
            format!("the last good checkpoint is kept at {}", ckpt.display())
        } else {
            "no checkpoint was written yet".to_string()
        }
    };
    // A state that went non-finite on a step whose loss was still finite is never saved
    // over the last good checkpoint.
    let save = |t: &Trainer, p: &Position| -> Result<()> {
        let state = t.download()?;
        if let Some(name) = state
            .iter()
            .find(|(_, (_, v))| v.iter().any(|x| !x.is_finite()))
            .map(|(k, _)| k)
        {
            return Err(Error::msg(format!(
                "the training state '{name}' became non-finite by step {} (epoch {}); training stopped and {}",
                p.step,
                if p.batch == 0 { p.epoch } else { p.epoch + 1 },
                kept()
            )));
        }
        checkpoint::save(&ckpt, &state, Some(p), &[])
    };
    while pos.epoch < o.epochs {
        let order = epoch_order(n, o.seed, pos.epoch);
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        let bar = if o.progress {
            let b = indicatif::ProgressBar::new(batches.len() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", pos.epoch + 1, o.epochs));
            b.set_position(pos.batch as u64);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        let start = Instant::now();
        let mut seen_now = 0usize;
        // The rate of the epoch's last step (also when a resume finds no step left in it).
        let mut lr = o
            .schedule
            .lr(o.lr, pos.step.saturating_sub(1), total, steps_per_epoch);
        if pos.epoch_extra_sums.len() != t.spec.extras.len() {
            pos.epoch_extra_sums = vec![0.0f64; t.spec.extras.len()];
        }
        while pos.batch < batches.len() {
            let chunk = batches[pos.batch];
            lr = o.schedule.lr(o.lr, pos.step, total, steps_per_epoch);
            let (x, shape, y) = train.batch(chunk);
            let (loss, correct, extras) = t.step_with_extras(x, &shape, &y, lr, pos.step + 1)?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::msg(format!(
                    "the loss became {loss} at step {} (epoch {}, batch {}); training stopped and {}",
                    pos.step + 1,
                    pos.epoch + 1,
                    pos.batch + 1,
                    kept()
                )));
            }
            pos.step += 1;
            pos.batch += 1;
            pos.epoch_loss_sum += loss as f64 * chunk.len() as f64;
            pos.epoch_correct += correct as f64;
            pos.epoch_seen += chunk.len();
            for (s, v) in pos.epoch_extra_sums.iter_mut().zip(&extras) {
                *s += *v as f64;
            }
            pos.epoch_steps += 1;
            // A validation step after every `every`-th training step, on θ_{t+1}.
            if let (Some(vs), Some(every)) = (val, val_every)
                && pos.step % every == 0
            {
                if val_cursor.1 == 0 || val_order.is_empty() {
                    val_order = epoch_order(vs.len(), o.seed ^ 0x7a1_7a1, val_cursor.0);
                }
                let end = (val_cursor.1 + val_batch).min(vs.len());
                let (vx, vshape, vy) = vs.batch(&val_order[val_cursor.1..end]);
                let vl = t.val_step(vx, &vshape, &vy)?;
                if !vl.is_finite() {
                    return Err(Error::msg(format!(
                        "the validation loss became {vl} at step {}; training stopped",
                        pos.step + 1
                    )));
                }
                val_cursor = if end >= vs.len() {
                    (val_cursor.0 + 1, 0)
                } else {
                    (val_cursor.0, end)
                };
            }
            seen_now += chunk.len();
            if o.progress {
                bar.inc(1);
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                let acc = if t.spec.classification {
                    format!(" acc {:.3}", pos.epoch_correct / pos.epoch_seen as f64)
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "loss {:.4}{acc} {:.0} samples/s",
                    pos.epoch_loss_sum / pos.epoch_seen as f64,
                    seen_now as f64 / secs
                ));
            }
            if interrupted.load(Ordering::SeqCst) {
                bar.abandon();
                save(t, &pos)?;
                return Err(Error::msg(format!(
                    "interrupted at step {}; checkpoint saved to {} (continue with --resume)",
                    pos.step,
                    ckpt.display()
                )));
            }
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let (logits, width, losses) = t.predict(v, 512)?;
                let acc = match &v.y {
                    Labels::Classes(y) if t.spec.classification => {
                        Some(crate::metrics::accuracy(&logits, width, y))
                    }
                    _ => None,
                };
                (
                    Some(losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64),
                    acc,
                )
            }
            None => (None, None),
        };
        let log = EpochLog {
            epoch: pos.epoch + 1,
            step: pos.step,
            lr,
            train_loss: pos.epoch_loss_sum / pos.epoch_seen.max(1) as f64,
            train_accuracy: t
                .spec
                .classification
                .then(|| pos.epoch_correct / pos.epoch_seen.max(1) as f64),
            val_loss,
            val_accuracy,
            samples_per_second: seen_now as f64 / secs.max(1e-9),
            seconds: secs,
            diagnostics: t
                .spec
                .extras
                .iter()
                .zip(&pos.epoch_extra_sums)
                .map(|(k, s)| (k.clone(), s / pos.epoch_steps.max(1) as f64))
                .chain(t.reg_values()?)
                .collect(),
        };
        if o.progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4}{}{}",
                log.epoch,
                o.epochs,
                log.train_loss,
                log.train_accuracy
                    .map(|a| format!(" acc {a:.4}"))
                    .unwrap_or_default(),
                match (log.val_loss, log.val_accuracy) {
                    (Some(l), Some(a)) => format!(", val loss {l:.4} acc {a:.4}"),
                    (Some(l), None) => format!(", val loss {l:.4}"),
                    _ => String::new(),
                }
            );
        }
        pos = Position {
            epoch: pos.epoch + 1,
            batch: 0,
            step: pos.step,
            ..Default::default()
        };
        // The line first: a kill between the two leaves a line that the next --resume
        // drops (its checkpoint is still the previous epoch's) and logs again, where the
        // other order would lose the line for good.
        append_log(&metrics, &log)?;
        save(t, &pos)?;
        logs.push(log);
    }
    Ok(logs)
}
