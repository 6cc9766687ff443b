//! ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
//! Models", 2020): every rank keeps the whole model and its gradient, but AdamW's two moments (and, under
//! bf16 mixed precision, the f32 master copies) only for one contiguous shard of the flat parameter
//! layout of `bucket.rs` (the parameters in model order, end to end), so the optimizer state per rank is
//! `1 / world_size` of the whole.
//!
//! One update:
//! 1. the local gradients, flattened in that layout (zeros for a parameter without a gradient), are summed
//!    bucket by bucket, each bucket cut where a shard ends and summed to the rank that owns it
//!    (`overlap.rs`: a reduce-scatter in pieces, which may start while backward runs): rank r holds the
//!    sum of shard r ([`Zero::reduce_after_backward`] without overlap);
//! 2. the global gradient norm is the square root of the shard squared norms summed over the ranks in f64,
//!    and each rank clips its shard by the rule of [`cola_optim::clip_grad_norm`];
//! 3. each rank applies AdamW to its slice of the parameters. AdamW is elementwise, so the update of a
//!    slice is the slice of the full update; a slice is a [`Parameter`] of its own named after the
//!    parameter it comes from, so weight decay is still chosen by name and the state is kept by name;
//! 4. the updated shards are all-gathered (as f32, which holds a bf16 value exactly), and every rank holds
//!    the whole updated model again.
//!
//! The optimizer is [`AdamW`] itself, handed the slices: its maths knows no ranks. Steps 2 and 3 are
//! [`AdamW::squared_norm`] and [`AdamW::step_clipped`]: on the CPU [`cola_optim::squared_norm`],
//! [`cola_optim::clip_to`] and [`AdamW::step`]; on a GPU the kernels of the fused multi-tensor step
//! ([`AdamW::clip_and_step`]) on the slices, its partial sums for the shard's squared norm and its update
//! with the global norm's clip factor, so that one rank's sharded step is the unsharded step bit for bit.
//!
//! The sums and the gather run where the parameters are. On the CPU (MPI) the shard is a host buffer
//! summed with MPI's reduce to each bucket's owner. On GPUs (NCCL, [`super::Collective::sums_on_device`])
//! every bucket is an f32 GPU tensor summed by `ncclReduce` to its owner: per bucket rather than one
//! `ncclReduceScatter`, because the buckets of the existing order (last to first, each inside one shard)
//! are what overlapping backward needs, and a reduce-scatter would need the whole gradient flattened before
//! it starts; the updated shards are gathered by `ncclAllGather`. The NCCL path is compiled and its
//! bookkeeping tested on the CPU, but it has not yet run on a GPU: `scripts/gpu_check.sh` carries the
//! world-size-1 runs that must match the plain run.
//!
//! Checkpoints keep the single-process format: [`Zero::gather_state`] assembles the whole state on save
//! and [`Zero::scatter_state`] keeps a rank's slice of a loaded checkpoint.
use super::bucket::{host_f32, Buckets, Segment};
use super::overlap::ReadyBuckets;
use super::{Collective, DistError, Result};
use cola_autograd::{GradStore, Parameter};
use cola_optim::AdamW;
use cola_tensor::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// The moments AdamW keeps per parameter, by the suffix of their checkpoint names.
const MOMENTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

/// The suffix of an f32 master copy's checkpoint name (mixed precision).
const MASTER: &str = "master";

/// Elements of each rank's shard of a flat layout of `total` elements over `world_size` ranks: equal
/// shards, the last padded.
pub fn shard_elements(total: usize, world_size: usize) -> usize {
    total.div_ceil(world_size.max(1)).max(1)
}

/// Bytes of AdamW state (two f32 moments) each of `world_size` ranks holds for `total` f32 parameters:
/// one shard's under ZeRO-1, else the whole.
pub fn optimizer_bytes_per_rank(total: usize, world_size: usize, zero: bool) -> usize {
    let elements = if zero { shard_elements(total, world_size) } else { total };
    2 * elements * size_of::<f32>()
}

/// This rank's share of the optimizer: the flat layout cut into one bucket per rank, and one slice
/// parameter per piece of a parameter inside this rank's bucket.
#[derive(Debug)]
pub struct Zero {
    /// The flat layout with buckets of one shard each: bucket r is rank r's shard.
    layout: Buckets,
    /// Elements per shard (the last rank's shard is padded to it).
    shard: usize,
    world_size: usize,
    /// The pieces of parameters in this rank's shard, in flat order.
    segments: Vec<Segment>,
    /// One slice parameter per segment, named as the parameter it is cut from; empty between updates
    /// ([`Zero::load_pieces`] sets them to views of the parameters).
    pieces: Vec<Parameter>,
    /// Where the parameters live (the shard's tensors live there too).
    device: Device,
}

impl Zero {
    /// Rank `rank`'s share of the optimizer of `params` (in model order, the same on every rank) among
    /// `world_size` ranks. The parameters must be f32 or bf16, all on one device.
    pub fn new(params: &[&Parameter], rank: usize, world_size: usize) -> Result<Zero> {
        let device = params.first().map_or(Device::Cpu, |p| p.value().device());
        let supported = |p: &&&Parameter| {
            let dtype = p.value().dtype();
            p.value().device() == device && matches!(dtype, DType::F32 | DType::BF16)
        };
        if let Some(p) = params.iter().find(|p| !supported(p)) {
            return Err(DistError::Zero(format!(
                "parameter {} is {} on {}: the sharded optimizer updates f32 or bf16 parameters on one \
                 device",
                p.name(),
                p.value().dtype(),
                p.value().device()
            )));
        }
        let world_size = world_size.max(1);
        let sizes: Vec<usize> = params.iter().map(|p| p.value().numel()).collect();
        let total: usize = sizes.iter().sum();
        let shard = shard_elements(total, world_size);
        let layout = Buckets::new(&sizes, shard)?;
        let segments = layout.segments(rank);
        let pieces = segments.iter().map(|s| Parameter::new(params[s.tensor].name(), empty())).collect();
        Ok(Zero { layout, shard, world_size, segments, pieces, device })
    }

    /// Bytes of optimizer state this rank holds once its shard has been updated, at
    /// `bytes_per_element` of state per parameter element (8 for two f32 moments; 12 with an f32 master).
    pub fn optimizer_bytes(&self, bytes_per_element: usize) -> usize {
        self.shard * bytes_per_element
    }

    /// Sets every slice parameter to a view of its piece of `values` (the parameters' values in model
    /// order). The optimizer writes a slice in place only after copying it (the view shares the
    /// parameter's storage), so the parameters change only through [`Zero::step`]'s gather.
    fn load_pieces(&mut self, values: &[&Tensor]) -> Result<()> {
        for (piece, s) in self.pieces.iter_mut().zip(&self.segments) {
            let whole = values[s.tensor].reshape(&[values[s.tensor].numel()])?;
            piece.set_value(whole.narrow(0, s.within_tensor.start, s.within_tensor.len())?);
        }
        Ok(())
    }

    /// The whole flat sequence (f32, `self.shard * world_size` long) from every rank's shard `mine` (this
    /// rank's, f32, `self.shard` long): on the device when the collective sums there, else through host
    /// buffers.
    fn gather(&self, collective: &dyn Collective, mine: Tensor) -> Result<Tensor> {
        if collective.sums_on_device() {
            return collective.all_gather_on_device(mine);
        }
        let mut all = vec![0.0f32; self.shard * self.world_size];
        collective.all_gather(&host_f32(&mine)?, &mut all)?;
        Ok(Tensor::from_vec(all, &[self.shard * self.world_size])?)
    }

    /// [`Zero::gather`] of host values, for checkpoints: every rank's `mine` end to end.
    fn gather_host(&self, collective: &dyn Collective, mine: &[f32]) -> Result<Vec<f32>> {
        let mut all = vec![0.0f32; self.shard * self.world_size];
        collective.all_gather(mine, &mut all)?;
        Ok(all)
    }

    /// Elements of each rank's shard of the flat layout.
    pub fn shard_elements(&self) -> usize {
        self.shard
    }

    /// The summed gradient of this rank's shard (a 1-D f32 tensor on the parameters' device) from the
    /// local gradients `grads` of `params` (model order), summed after backward in buckets of
    /// `bucket_bytes` (the same calls as when the sums overlap backward).
    pub fn reduce_after_backward(
        &self,
        collective: &dyn Collective,
        params: &[&Parameter],
        grads: &GradStore,
        bucket_bytes: usize,
    ) -> Result<Tensor> {
        let mut ready = ReadyBuckets::new(params, bucket_bytes, Some(self.shard))?;
        let summed = ready.sum_after_backward(collective, grads)?;
        ready.owned_shard(&summed, collective.rank())
    }

    /// One update of `params` (model order) from `mine`, the summed gradient of this rank's shard (1-D
    /// f32), with learning rate `lr`, clipped to the global norm `max_norm`; returns the global norm
    /// before clipping. When the norm is not finite nothing is updated (the caller refuses the step), as
    /// every rank sees the same norm.
    pub fn step(
        &mut self,
        collective: &dyn Collective,
        optimizer: &mut AdamW,
        params: &mut [&mut Parameter],
        mine: Tensor,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        if mine.shape() != [self.shard] || mine.dtype() != DType::F32 || mine.device() != self.device {
            return Err(DistError::Zero(format!(
                "a shard is {} f32 elements on {}, not {:?} {} on {}",
                self.shard,
                self.device,
                mine.shape(),
                mine.dtype(),
                mine.device()
            )));
        }
        let values: Vec<&Tensor> = params.iter().map(|p| p.value()).collect();
        self.load_pieces(&values)?;
        let mut piece_grads = GradStore::new();
        for (piece, s) in self.pieces.iter().zip(&self.segments) {
            // In the parameter's dtype, as the unsharded optimizer receives the summed gradient.
            let grad = mine.narrow(0, s.within_bucket.start, s.within_bucket.len())?;
            piece_grads.set(piece.id(), grad.to_dtype(piece.value().dtype())?);
        }
        let mut pieces: Vec<&mut Parameter> = self.pieces.iter_mut().collect();
        let mut total = [optimizer.squared_norm(&mut pieces, &piece_grads)?];
        collective.all_reduce_sum_f64(&mut total)?;
        let norm = total[0].sqrt();
        if norm.is_finite() {
            optimizer.step_clipped(&mut pieces, &mut piece_grads, lr, norm, max_norm)?;
        }
        let mut updated = Tensor::zeros_on(&[self.shard], DType::F32, self.device)?;
        for (piece, s) in self.pieces.iter_mut().zip(&self.segments) {
            updated.write_slice(0, s.within_bucket.start, &piece.value().to_dtype(DType::F32)?)?;
            // The slices are loaded again before each use: between updates they hold no memory.
            piece.set_value(empty());
        }
        if !norm.is_finite() {
            return Ok(norm);
        }
        let all = self.gather(collective, updated)?;
        for (i, param) in params.iter_mut().enumerate() {
            let span = self.layout.span(i);
            let (shape, dtype) = (param.value().shape().to_vec(), param.value().dtype());
            let slice = all.narrow(0, span.start, span.len())?;
            // A parameter gets storage of its own: a copy (f32) or the rounding (bf16, exact) of its slice.
            let value =
                if dtype == DType::F32 { Tensor::concat(&[slice], 0)? } else { slice.to_dtype(dtype)? };
            param.set_value(value.reshape(&shape)?);
        }
        Ok(norm)
    }

    /// The whole optimizer of `params` as one process holds it: a copy of `optimizer` (this rank's
    /// slices) whose state is every rank's slices gathered into whole tensors (the moments and, under
    /// mixed precision, the f32 masters). Every rank calls it (it is a collective operation); the result
    /// is the same on every rank.
    pub fn gather_state(
        &self,
        collective: &dyn Collective,
        optimizer: &AdamW,
        params: &[&Parameter],
    ) -> Result<AdamW> {
        let state: BTreeMap<String, Tensor> = optimizer.state_tensors().into_iter().collect();
        let has_masters = state.keys().any(|key| key.ends_with(&format!(".{MASTER}")));
        let mut whole = BTreeMap::new();
        for what in MOMENTS.into_iter().chain(has_masters.then_some(MASTER)) {
            let mut mine = vec![0.0f32; self.shard];
            for (piece, s) in self.pieces.iter().zip(&self.segments) {
                let into = &mut mine[s.within_bucket.clone()];
                match state.get(&format!("{}.{what}", piece.name())) {
                    Some(saved) => into.copy_from_slice(&host_f32(saved)?),
                    // A slice not yet updated: its master would start as the parameter's value...
                    None if what == MASTER => {
                        into.copy_from_slice(&host_f32(params[s.tensor].value())?[s.within_tensor.clone()])
                    }
                    // ... and its moments as zeros, as AdamW creates them.
                    None => {}
                }
            }
            let all = self.gather_host(collective, &mine)?;
            for (i, param) in params.iter().enumerate() {
                let values = Tensor::from_vec(all[self.layout.span(i)].to_vec(), param.value().shape())?;
                whole.insert(format!("{}.{what}", param.name()), values);
            }
        }
        let mut full = optimizer.clone();
        full.load_state(params, &whole, optimizer.step_count())?;
        Ok(full)
    }

    /// Keeps this rank's slices of the whole optimizer `full` (loaded from a checkpoint for `params`) in
    /// `optimizer`, with `full`'s update count: the moments and, where `full` has them, the masters. An
    /// optimizer that has never updated has no state to keep.
    pub fn scatter_state(
        &mut self,
        full: &AdamW,
        optimizer: &mut AdamW,
        params: &[&Parameter],
    ) -> Result<()> {
        let whole: BTreeMap<String, Tensor> = full.state_tensors().into_iter().collect();
        if whole.is_empty() {
            return Ok(());
        }
        let values: Vec<&Tensor> = params.iter().map(|p| p.value()).collect();
        self.load_pieces(&values)?;
        let mut sliced = BTreeMap::new();
        for (piece, s) in self.pieces.iter().zip(&self.segments) {
            for what in MOMENTS.into_iter().chain([MASTER]) {
                let key = format!("{}.{what}", piece.name());
                let Some(saved) = whole.get(&key) else {
                    if what == MASTER {
                        continue; // no master: f32 parameters, or AdamW makes one from the value
                    }
                    return Err(DistError::Zero(format!("the loaded optimizer has no {key}")));
                };
                let values = host_f32(saved)?;
                let slice = values[s.within_tensor.clone()].to_vec();
                sliced.insert(key, Tensor::from_vec(slice, &[s.within_tensor.len()])?);
            }
        }
        let pieces: Vec<&Parameter> = self.pieces.iter().collect();
        optimizer.load_state(&pieces, &sliced, full.step_count())?;
        for piece in &mut self.pieces {
            piece.set_value(empty());
        }
        Ok(())
    }
}

/// The value of a slice parameter between updates: no elements.
fn empty() -> Tensor {
    Tensor::zeros(&[0], DType::F32)
}

#[cfg(test)]
mod tests {
    //! In one process the sharded step must be the plain one bit for bit: the one shard is every
    //! parameter whole, its squared norm is summed over the same tensors in the same order, and the
    //! slices AdamW updates are the parameters themselves. The gather and scatter of the state are
    //! copies, so a state gathered, saved as the plain optimizer's and scattered again continues
    //! unchanged. Both paths are checked: host buffers (MPI's) and tensors where the parameters lie
    //! (NCCL's, here on CPU tensors through a one-rank collective that sums on the device), in f32 and
    //! in bf16 with f32 masters. The split of the layout among several ranks is index arithmetic,
    //! checked exactly; the sums between real ranks are checked under mpirun (tests/dist.rs).
    use super::super::Single;
    use super::*;
    use cola_optim::AdamWConfig;
    use cola_tensor::Rng;

    /// One rank whose sums are on the device: the identity, on tensors (NCCL's path at world size 1).
    #[derive(Debug)]
    struct OneDevice;

    impl Collective for OneDevice {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            1
        }
        fn all_reduce_sum(&self, _buffer: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
            Ok(())
        }
        fn sums_on_device(&self) -> bool {
            true
        }
        fn all_reduce_sum_on_device(&self, _buffer: &mut Tensor) -> Result<()> {
            Ok(())
        }
        fn all_gather(&self, shard: &[f32], all: &mut [f32]) -> Result<()> {
            Single.all_gather(shard, all)
        }
        fn broadcast(&self, _buffer: &mut [u8], _root: usize) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
    }

    fn model(rng: &mut Rng, dtype: DType) -> Vec<Parameter> {
        [&[3usize, 4][..], &[5], &[2, 3]]
            .iter()
            .enumerate()
            .map(|(i, shape)| Parameter::new(format!("p{i}"), Tensor::randn(shape, 0.0, 1.0, dtype, rng)))
            .collect()
    }

    fn gradients(params: &[Parameter], rng: &mut Rng) -> GradStore {
        let mut grads = GradStore::new();
        for p in params {
            grads.set(p.id(), Tensor::randn(p.value().shape(), 0.0, 1.0, p.value().dtype(), rng));
        }
        grads
    }

    fn optimizer() -> AdamW {
        let mut adamw = AdamW::new(AdamWConfig::default());
        adamw.exempt_from_decay(["p1"]);
        adamw
    }

    fn bits(tensors: impl IntoIterator<Item = Tensor>) -> Vec<Vec<u64>> {
        tensors.into_iter().map(|t| t.to_vec_f64().iter().map(|x| x.to_bits()).collect()).collect()
    }

    fn values(params: &[Parameter]) -> Vec<Vec<u64>> {
        bits(params.iter().map(|p| p.value().clone()))
    }

    fn state(adamw: &AdamW) -> Vec<(String, Vec<u64>)> {
        adamw.state_tensors().into_iter().map(|(name, t)| (name, bits([t]).remove(0))).collect()
    }

    #[test]
    fn one_shard_is_the_plain_step_bit_for_bit_and_survives_a_gather_and_scatter() {
        let paths: [(&dyn Collective, DType, usize); 4] = [
            (&Single, DType::F32, 6),
            (&OneDevice, DType::F32, 6),
            (&Single, DType::BF16, 9),
            (&OneDevice, DType::BF16, 9),
        ];
        for (collective, dtype, state_tensors) in paths {
            let what = format!("{dtype}, sums on the device: {}", collective.sums_on_device());
            let mut rng = Rng::new(3);
            let mut plain = model(&mut rng, dtype);
            let mut sharded: Vec<Parameter> =
                plain.iter().map(|p| Parameter::new(p.name(), p.value().contiguous().unwrap())).collect();
            let (mut plain_adamw, mut sharded_adamw) = (optimizer(), optimizer());
            let mut zero = Zero::new(&sharded.iter().collect::<Vec<_>>(), 0, 1).unwrap();
            // A clip norm of 1 clips every step (the norm of 26 unit normals is about 5).
            for step in 0..3 {
                let seed = rng.below(1 << 30);
                let mut grads = gradients(&plain, &mut Rng::new(seed));
                let mut params: Vec<&mut Parameter> = plain.iter_mut().collect();
                let norm = plain_adamw.clip_and_step(&mut params, &mut grads, 1e-2, 1.0).unwrap();
                let grads = gradients(&sharded, &mut Rng::new(seed));
                let refs: Vec<&Parameter> = sharded.iter().collect();
                // Buckets of 8 bytes: the shard is summed in 2-element pieces.
                let mine = zero.reduce_after_backward(collective, &refs, &grads, 8).unwrap();
                let mut params: Vec<&mut Parameter> = sharded.iter_mut().collect();
                let zero_norm =
                    zero.step(collective, &mut sharded_adamw, &mut params, mine, 1e-2, 1.0).unwrap();
                assert_eq!(norm.to_bits(), zero_norm.to_bits(), "{what}, step {step}");
                assert_eq!(values(&plain), values(&sharded), "{what}, step {step}");
                assert!(sharded.iter().all(|p| p.value().dtype() == dtype));
                if step == 1 {
                    // Save and resume: the gathered state is the plain optimizer's, the scattered one
                    // continues.
                    let refs: Vec<&Parameter> = sharded.iter().collect();
                    let full = zero.gather_state(collective, &sharded_adamw, &refs).unwrap();
                    let (a, b) = (state(&plain_adamw), state(&full));
                    assert_eq!((a.len(), &a), (state_tensors, &b), "{what}");
                    sharded_adamw = optimizer();
                    zero = Zero::new(&refs, 0, 1).unwrap();
                    zero.scatter_state(&full, &mut sharded_adamw, &refs).unwrap();
                    assert_eq!(sharded_adamw.step_count(), 2);
                    assert_eq!(state(&sharded_adamw), a, "{what}: the one slice of each is the whole");
                }
            }
        }
    }

    #[test]
    fn the_shards_of_several_ranks_cut_the_flat_layout_in_order_with_the_tail_padded() {
        // 12 + 5 + 6 = 23 elements over 3 ranks: shards of 8 (0..8, 8..16, 16..23 and one padding).
        let params = model(&mut Rng::new(1), DType::F32);
        let refs: Vec<&Parameter> = params.iter().collect();
        let shards: Vec<Zero> = (0..3).map(|rank| Zero::new(&refs, rank, 3).unwrap()).collect();
        let cut =
            |z: &Zero| z.segments.iter().map(|s| (s.tensor, s.within_tensor.clone())).collect::<Vec<_>>();
        assert_eq!(cut(&shards[0]), vec![(0, 0..8)]);
        assert_eq!(cut(&shards[1]), vec![(0, 8..12), (1, 0..4)]);
        assert_eq!(cut(&shards[2]), vec![(1, 4..5), (2, 0..6)]);
        assert!(shards.iter().all(|z| z.optimizer_bytes(8) == 2 * 8 * 4));
        let names: Vec<&str> = shards[1].pieces.iter().map(Parameter::name).collect();
        assert_eq!(names, ["p0", "p1"], "slices keep their parameter's name (weight decay by name)");
        let f64_param = Parameter::new("h", Tensor::zeros(&[2], DType::F64));
        let refused = Zero::new(&[&f64_param], 0, 2).unwrap_err().to_string();
        assert!(refused.contains("f32 or bf16 parameters"), "{refused}");
    }
}
