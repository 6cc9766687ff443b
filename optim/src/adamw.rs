//! AdamW (decoupled weight decay) over named parameters, with its state kept by parameter name so that
//! checkpoints survive a restart (parameter ids are per process).
//!
//! The optimizer does not know what a parameter is for. Which parameters are spared weight decay is the
//! caller's decision, made from each parameter's role in the model (the trainer exempts RMSNorm weights
//! and the embedding table under `--no-decay-norms-embeddings`) and handed over by name with
//! [`AdamW::exempt_from_decay`], the key the state already uses.
use crate::clip::{clip_factor, clip_grad_norm, clip_to, squared_norm};
use crate::error::{OptimError, Result};
use cola_autograd::{GradStore, Parameter};
use cola_tensor::ops::optim::{AdamWStep, AdamWTensors, MultiTensorPlan};
use cola_tensor::{DType, Device, Tensor};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

/// The parameters of `params` with a gradient in `grads` (indices), when there is one and every one of
/// them lives on one GPU: the case of the multi-tensor step.
fn on_one_gpu(params: &[&mut Parameter], grads: &GradStore) -> Option<Vec<usize>> {
    let with_grad: Vec<usize> = (0..params.len()).filter(|&i| grads.get(params[i].id()).is_some()).collect();
    let device = with_grad.first().map(|&i| params[i].value().device());
    let one_gpu = matches!(device, Some(Device::Cuda(_)))
        && with_grad.iter().all(|&i| Some(params[i].value().device()) == device);
    one_gpu.then_some(with_grad)
}

/// Hyper-parameters; the defaults are the CoLA recipe's (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on
/// every parameter not exempted by [`AdamW::exempt_from_decay`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Keep an f32 master copy (and f32 moments) of every bf16 parameter: the update runs on the master
    /// and the parameter receives its bf16 rounding (mixed precision). Off, bf16 parameters are updated in
    /// bf16 with bf16 moments (pure bf16, GPU only).
    pub master_weights: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, master_weights: true }
    }
}

/// First and second moments of one parameter, and its f32 master copy under mixed precision.
#[derive(Clone, Debug)]
struct Moments {
    m: Tensor,
    v: Tensor,
    master: Option<Tensor>,
}

#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of updates applied so far.
    step: u64,
    state: BTreeMap<String, Moments>,
    /// Parameters updated without weight decay, by name.
    no_decay: BTreeSet<String>,
    /// Device tables of the multi-tensor step on the GPU ([`AdamW::clip_and_step`]).
    plan: MultiTensorPlan,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            state: BTreeMap::new(),
            no_decay: BTreeSet::new(),
            plan: MultiTensorPlan::default(),
        }
    }

    /// Updates the parameters named `names` without weight decay from now on (their moments and the
    /// rest of the update are unchanged).
    pub fn exempt_from_decay<S: Into<String>>(&mut self, names: impl IntoIterator<Item = S>) {
        self.no_decay.extend(names.into_iter().map(Into::into));
    }

    /// Whether the parameter named `name` gets weight decay.
    pub fn decays(&self, name: &str) -> bool {
        !self.no_decay.contains(name)
    }

    /// Updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Whether a parameter stored as `dtype` gets an f32 master copy, and the dtype of its moments (f32
    /// under mixed precision, else the parameter's own).
    pub fn state_dtype(&self, dtype: DType) -> (bool, DType) {
        let mixed = self.config.master_weights && dtype == DType::BF16;
        (mixed, if mixed { DType::F32 } else { dtype })
    }

    /// The hyper-parameters of update number `self.step` with learning rate `lr` and weight decay `decay`.
    fn hyper(&self, lr: f64, decay: f64) -> AdamWStep {
        let c = &self.config;
        AdamWStep { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: decay, step: self.step }
    }

    /// The state of `param`, created at its first update: zero moments and, under mixed precision, an f32
    /// copy of its value.
    fn moments(&mut self, param: &Parameter) -> Result<&mut Moments> {
        let (mixed, state_dtype) = self.state_dtype(param.value().dtype());
        Ok(match self.state.entry(param.name().to_string()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let value = param.value();
                let master = if mixed { Some(value.to_dtype(DType::F32)?) } else { None };
                let zeros = || Tensor::zeros_on(value.shape(), state_dtype, value.device());
                entry.insert(Moments { m: zeros()?, v: zeros()?, master })
            }
        })
    }

    /// Applies one update with learning rate `lr` to every parameter that has a gradient in `grads`.
    pub fn step(&mut self, params: &mut [&mut Parameter], grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        for param in params.iter_mut() {
            let Some(grad) = grads.get(param.id()) else { continue };
            let decay = if self.decays(param.name()) { self.config.weight_decay } else { 0.0 };
            let hyper = self.hyper(lr, decay);
            let moments = self.moments(param)?;
            match moments.master.as_mut() {
                Some(master) => {
                    // The bf16 gradient is widened and the master rounded into the param in the same
                    // pass as the update (the bits of upcasting, stepping the master and rounding it).
                    let mut value = param.value().clone();
                    param.set_value(Tensor::zeros(&[], value.dtype()));
                    let result = Tensor::adamw_step_mixed(
                        master,
                        grad,
                        &mut moments.m,
                        &mut moments.v,
                        &mut value,
                        hyper,
                    );
                    param.set_value(value);
                    result?;
                }
                None => {
                    let mut value = param.value().clone();
                    param.set_value(Tensor::zeros(&[], value.dtype()));
                    // With the old value dropped from the parameter, the update runs in place when nothing
                    // else holds the tensor.
                    let result = Tensor::adamw_step(&mut value, grad, &mut moments.m, &mut moments.v, hyper);
                    param.set_value(value);
                    result?;
                }
            }
        }
        Ok(())
    }

    /// Clips the gradients to the global norm `max_norm` (as [`clip_grad_norm`]) and applies one update
    /// with learning rate `lr`; returns the norm before clipping. When the norm is not finite nothing is
    /// updated and the update count stays, so that the caller can refuse the step.
    ///
    /// When every parameter with a gradient lives on one GPU this is one multi-tensor step
    /// ([`Tensor::clip_adamw_multi`]: three launches and one read of the norm whatever the number of
    /// parameters; the gradients are scaled as they are read, `grads` is left as it is). Elsewhere it is
    /// [`clip_grad_norm`] followed by [`AdamW::step`], bit for bit. The norm is that of every gradient in
    /// `grads`, which should hold gradients of `params` alone (as the trainer's store does).
    pub fn clip_and_step(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &mut GradStore,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let Some(with_grad) = on_one_gpu(params, grads) else {
            let norm = clip_grad_norm(grads, max_norm)?;
            if norm.is_finite() {
                self.step(params, grads, lr)?;
            }
            return Ok(norm);
        };
        self.step += 1;
        let result = self.with_group(params, with_grad, grads, lr, |plan, group, hyper| {
            Tensor::clip_adamw_multi(plan, group, max_norm, hyper)
        });
        if !matches!(result, Ok(norm) if norm.is_finite()) {
            self.step -= 1;
        }
        result
    }

    /// The sum of the squares of the gradients `grads` holds for `params`, in f64: this store's share of
    /// a global norm whose other shares lie elsewhere (ZeRO-1's shards on other ranks), to be summed and
    /// handed to [`AdamW::step_clipped`]. On one GPU it is the sum [`AdamW::clip_and_step`] takes the square
    /// root of, bit for bit ([`Tensor::multi_tensor_squares`]: the same partial sums in the same order);
    /// elsewhere [`squared_norm`] of `grads`. Creates the state of a parameter not updated yet (zero
    /// moments), as the update would.
    pub fn squared_norm(&mut self, params: &mut [&mut Parameter], grads: &GradStore) -> Result<f64> {
        let Some(with_grad) = on_one_gpu(params, grads) else { return squared_norm(grads) };
        self.with_group(params, with_grad, grads, 0.0, |plan, group, _| {
            Tensor::multi_tensor_squares(plan, group)
        })
    }

    /// [`AdamW::clip_and_step`] with the global norm `norm` given (the square root of [`AdamW::squared_norm`]
    /// summed over every store the norm covers): the gradients are scaled by [`clip_factor`] and one
    /// update is applied. On one GPU this is the multi-tensor update with that norm and factor
    /// ([`Tensor::adamw_multi_scaled`], the gradients scaled as they are read, `grads` left as it is);
    /// elsewhere [`clip_to`] followed by [`AdamW::step`]. A norm that is not finite updates nothing and
    /// is not counted: the caller refuses the step.
    pub fn step_clipped(
        &mut self,
        params: &mut [&mut Parameter],
        grads: &mut GradStore,
        lr: f64,
        norm: f64,
        max_norm: f64,
    ) -> Result<()> {
        if !norm.is_finite() {
            return Ok(());
        }
        let Some(with_grad) = on_one_gpu(params, grads) else {
            clip_to(grads, norm, max_norm)?;
            return self.step(params, grads, lr);
        };
        self.step += 1;
        let factor = clip_factor(norm, max_norm);
        let result = self.with_group(params, with_grad, grads, lr, |plan, group, hyper| {
            Tensor::adamw_multi_scaled(plan, group, norm, factor, hyper)
        });
        if result.is_err() {
            self.step -= 1;
        }
        result
    }

    /// Runs `f` (a multi-tensor launch) on the group of the parameters `with_grad` (indices into
    /// `params`, every one with a gradient in `grads`, on one GPU), their state and gradients, with the
    /// hyper-parameters of update `self.step` at learning rate `lr`.
    fn with_group<T>(
        &mut self,
        params: &mut [&mut Parameter],
        mut with_grad: Vec<usize>,
        grads: &GradStore,
        lr: f64,
        f: impl FnOnce(&mut MultiTensorPlan, &mut [AdamWTensors], AdamWStep) -> cola_tensor::Result<T>,
    ) -> Result<T> {
        // Name order is the order of `self.state`, so one pass over it pairs each state with its parameter.
        with_grad.sort_by(|&a, &b| params[a].name().cmp(params[b].name()));
        if let Some(pair) = with_grad.windows(2).find(|w| params[w[0]].name() == params[w[1]].name()) {
            return Err(OptimError::DuplicateName { name: params[pair[0]].name().to_string() });
        }
        for &i in &with_grad {
            self.moments(params[i])?;
        }
        let hyper = self.hyper(lr, self.config.weight_decay);
        // Each value leaves its parameter during the step, so that the kernel updates it in place.
        let mut values: Vec<Tensor> = with_grad
            .iter()
            .map(|&i| {
                let value = params[i].value().clone();
                params[i].set_value(Tensor::zeros(&[], value.dtype()));
                value
            })
            .collect();
        let result = {
            let names: BTreeSet<&str> = with_grad.iter().map(|&i| params[i].name()).collect();
            let grad_of = with_grad.iter().filter_map(|&i| grads.get(params[i].id()));
            let states = self.state.iter_mut().filter(|(name, _)| names.contains(name.as_str()));
            let no_decay = &self.no_decay;
            let mut group: Vec<AdamWTensors> = states
                .zip(values.iter_mut())
                .zip(grad_of)
                .map(|(((name, moments), value), grad)| AdamWTensors {
                    param: value,
                    grad,
                    m: &mut moments.m,
                    v: &mut moments.v,
                    master: moments.master.as_mut(),
                    decays: !no_decay.contains(name),
                })
                .collect();
            f(&mut self.plan, &mut group, hyper)
        };
        for (&i, value) in with_grad.iter().zip(values) {
            params[i].set_value(value);
        }
        Ok(result?)
    }

    /// The state as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.state.len());
        for (name, s) in &self.state {
            out.push((format!("{name}.exp_avg"), s.m.clone()));
            out.push((format!("{name}.exp_avg_sq"), s.v.clone()));
            if let Some(master) = &s.master {
                out.push((format!("{name}.master"), master.clone()));
            }
        }
        out
    }

    /// Restores the state saved by [`AdamW::state_tensors`] for `params`, and the update count. Under mixed
    /// precision a bf16 parameter without a saved master copy gets one from its current value.
    pub fn load_state(
        &mut self,
        params: &[&Parameter],
        tensors: &BTreeMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        let mut state = BTreeMap::new();
        for p in params {
            let (mixed, state_dtype) = self.state_dtype(p.value().dtype());
            let get = |what: &'static str| -> Result<Tensor> {
                let key = format!("{}.{what}", p.name());
                let t =
                    tensors.get(&key).ok_or(OptimError::MissingState { name: p.name().to_string(), what })?;
                if t.shape() != p.value().shape() {
                    return Err(OptimError::StateShape {
                        name: key,
                        expected: p.value().shape().to_vec(),
                        got: t.shape().to_vec(),
                    });
                }
                Ok(t.to_dtype(state_dtype)?.to_device(p.value().device())?)
            };
            let master = match (mixed, tensors.get(&format!("{}.master", p.name()))) {
                (false, _) => None,
                (true, Some(saved)) => Some(saved.to_dtype(DType::F32)?.to_device(p.value().device())?),
                (true, None) => Some(p.value().to_dtype(DType::F32)?),
            };
            state.insert(p.name().to_string(), Moments { m: get("exp_avg")?, v: get("exp_avg_sq")?, master });
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}
