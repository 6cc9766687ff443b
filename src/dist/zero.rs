//! ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
//! Models", 2020): every rank keeps the whole model and its gradient, but AdamW's two moments only for
//! one contiguous shard of the flat parameter layout of `bucket.rs` (the parameters in model order, end
//! to end), so the optimizer state per rank is `1 / world_size` of the whole.
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
//!    parameter it comes from, so weight decay is still chosen by name and the moments are kept by name;
//! 4. the updated shards are all-gathered, and every rank holds the whole updated model again.
//!
//! The optimizer is [`AdamW`] itself, handed the slices: its maths knows no ranks. Checkpoints keep the
//! single-process format: [`Zero::gather_state`] assembles the whole moments on save and
//! [`Zero::scatter_state`] keeps a rank's slice of a loaded checkpoint.
use super::bucket::{host_f32, Buckets, Segment};
use super::overlap::ReadyBuckets;
use super::{Collective, DistError, Result};
use cola_autograd::{GradStore, Parameter};
use cola_optim::{clip_to, squared_norm, AdamW};
use cola_tensor::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// The moments AdamW keeps per parameter, by the suffix of their checkpoint names.
const MOMENTS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

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
    /// ([`Zero::load_pieces`] fills them from the parameters).
    pieces: Vec<Parameter>,
}

impl Zero {
    /// Rank `rank`'s share of the optimizer of `params` (in model order, the same on every rank) among
    /// `world_size` ranks. The parameters must be f32 on the CPU (ZeRO runs over MPI on the CPU).
    pub fn new(params: &[&Parameter], rank: usize, world_size: usize) -> Result<Zero> {
        if let Some(p) =
            params.iter().find(|p| p.value().dtype() != DType::F32 || p.value().device() != Device::Cpu)
        {
            return Err(DistError::Zero(format!(
                "parameter {} is {} on {}: the sharded optimizer updates f32 parameters on the CPU",
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
        let pieces = segments
            .iter()
            .map(|s| {
                Parameter::new(params[s.tensor].name(), Tensor::zeros(&[s.within_tensor.len()], DType::F32))
            })
            .collect();
        Ok(Zero { layout, shard, world_size, segments, pieces })
    }

    /// Bytes of AdamW state this rank holds once its shard has been updated: two f32 moments per
    /// element of a shard.
    pub fn optimizer_bytes(&self) -> usize {
        optimizer_bytes_per_rank(self.shard * self.world_size, self.world_size, true)
    }

    /// Sets every slice parameter to the current values of its piece of `values` (the parameters' values
    /// in model order).
    fn load_pieces(&mut self, values: &[&Tensor]) -> Result<()> {
        for (piece, s) in self.pieces.iter_mut().zip(&self.segments) {
            let whole = host_f32(values[s.tensor])?;
            piece.set_value(Tensor::from_vec(
                whole[s.within_tensor.clone()].to_vec(),
                &[s.within_tensor.len()],
            )?);
        }
        Ok(())
    }

    /// The whole flat sequence from every rank's shard of `mine` (this rank's shard, `self.shard` long).
    fn gather(&self, collective: &dyn Collective, mine: &[f32]) -> Result<Vec<f32>> {
        let mut all = vec![0.0f32; self.shard * self.world_size];
        collective.all_gather(mine, &mut all)?;
        Ok(all)
    }

    /// Elements of each rank's shard of the flat layout.
    pub fn shard_elements(&self) -> usize {
        self.shard
    }

    /// The summed gradient of this rank's shard from the local gradients `grads` of `params` (model
    /// order), summed after backward in buckets of `bucket_bytes` (the same calls as when the sums
    /// overlap backward).
    pub fn reduce_after_backward(
        &self,
        collective: &dyn Collective,
        params: &[&Parameter],
        grads: &GradStore,
        bucket_bytes: usize,
    ) -> Result<Vec<f32>> {
        let mut ready = ReadyBuckets::new(params, bucket_bytes, Some(self.shard))?;
        let summed = ready.sum_after_backward(collective, grads)?;
        ready.owned_shard(&summed, collective.rank())
    }

    /// One update of `params` (model order) from `mine`, the summed gradient of this rank's shard, with
    /// learning rate `lr`, clipped to the global norm `max_norm`; returns the global norm before
    /// clipping. When the norm is not finite nothing is updated (the caller refuses the step), as every
    /// rank sees the same norm.
    pub fn step(
        &mut self,
        collective: &dyn Collective,
        optimizer: &mut AdamW,
        params: &mut [&mut Parameter],
        mut mine: Vec<f32>,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        if mine.len() != self.shard {
            return Err(DistError::Zero(format!("a shard of {} elements, not {}", self.shard, mine.len())));
        }

        let mut piece_grads = GradStore::new();
        for (piece, s) in self.pieces.iter().zip(&self.segments) {
            let grad = Tensor::from_vec(mine[s.within_bucket.clone()].to_vec(), &[s.within_bucket.len()])?;
            piece_grads.set(piece.id(), grad);
        }
        let mut total = [squared_norm(&piece_grads)?];
        collective.all_reduce_sum_f64(&mut total)?;
        let norm = total[0].sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        clip_to(&mut piece_grads, norm, max_norm)?;

        let values: Vec<&Tensor> = params.iter().map(|p| p.value()).collect();
        self.load_pieces(&values)?;
        let mut pieces: Vec<&mut Parameter> = self.pieces.iter_mut().collect();
        optimizer.step(&mut pieces, &piece_grads, lr)?;

        for (piece, s) in self.pieces.iter_mut().zip(&self.segments) {
            mine[s.within_bucket.clone()].copy_from_slice(&piece.value().to_vec::<f32>()?);
            // The slices are loaded again before each use: between updates they hold no memory.
            piece.set_value(Tensor::zeros(&[0], DType::F32));
        }
        let all = self.gather(collective, &mine)?;
        for (i, param) in params.iter_mut().enumerate() {
            let shape = param.value().shape().to_vec();
            param.set_value(Tensor::from_vec(all[self.layout.span(i)].to_vec(), &shape)?);
        }
        Ok(norm)
    }

    /// The whole optimizer of `params` as one process holds it: a copy of `optimizer` (this rank's
    /// slices) whose moments are every rank's slices gathered into whole tensors. Every rank calls it
    /// (it is a collective operation); the result is the same on every rank.
    pub fn gather_state(
        &self,
        collective: &dyn Collective,
        optimizer: &AdamW,
        params: &[&Parameter],
    ) -> Result<AdamW> {
        let state: BTreeMap<String, Tensor> = optimizer.state_tensors().into_iter().collect();
        let mut whole = BTreeMap::new();
        for what in MOMENTS {
            let mut mine = vec![0.0f32; self.shard];
            for (piece, s) in self.pieces.iter().zip(&self.segments) {
                // A slice not yet updated has zero moments, as AdamW creates them.
                if let Some(moment) = state.get(&format!("{}.{what}", piece.name())) {
                    mine[s.within_bucket.clone()].copy_from_slice(&moment.to_vec::<f32>()?);
                }
            }
            let all = self.gather(collective, &mine)?;
            for (i, param) in params.iter().enumerate() {
                let moment = Tensor::from_vec(all[self.layout.span(i)].to_vec(), param.value().shape())?;
                whole.insert(format!("{}.{what}", param.name()), moment);
            }
        }
        let mut full = optimizer.clone();
        full.load_state(params, &whole, optimizer.step_count())?;
        Ok(full)
    }

    /// Keeps this rank's slices of the whole optimizer `full` (loaded from a checkpoint for `params`) in
    /// `optimizer`, with `full`'s update count. An optimizer that has never updated has no state to keep.
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
            for what in MOMENTS {
                let key = format!("{}.{what}", piece.name());
                let moment = whole
                    .get(&key)
                    .ok_or_else(|| DistError::Zero(format!("the loaded optimizer has no {key}")))?;
                let values = host_f32(moment)?;
                let slice = values[s.within_tensor.clone()].to_vec();
                sliced.insert(key, Tensor::from_vec(slice, &[s.within_tensor.len()])?);
            }
        }
        let pieces: Vec<&Parameter> = self.pieces.iter().collect();
        optimizer.load_state(&pieces, &sliced, full.step_count())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! In one process the sharded step must be the plain one bit for bit: the one shard is every
    //! parameter whole, its squared norm is summed over the same tensors in the same order, and the
    //! slices AdamW updates are the parameters themselves. The gather and scatter of the moments are
    //! copies, so a state gathered, saved as the plain optimizer's and scattered again continues
    //! unchanged. The split of the layout among several ranks is index arithmetic, checked exactly; the
    //! sums between real ranks are checked under mpirun (tests/dist.rs).
    use super::super::Single;
    use super::*;
    use cola_optim::{clip_grad_norm, AdamWConfig};
    use cola_tensor::Rng;

    fn model(rng: &mut Rng) -> Vec<Parameter> {
        [&[3usize, 4][..], &[5], &[2, 3]]
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                Parameter::new(format!("p{i}"), Tensor::randn(shape, 0.0, 1.0, DType::F32, rng))
            })
            .collect()
    }

    fn gradients(params: &[Parameter], rng: &mut Rng) -> GradStore {
        let mut grads = GradStore::new();
        for p in params {
            grads.set(p.id(), Tensor::randn(p.value().shape(), 0.0, 1.0, DType::F32, rng));
        }
        grads
    }

    fn optimizer() -> AdamW {
        let mut adamw = AdamW::new(AdamWConfig::default());
        adamw.exempt_from_decay(["p1"]);
        adamw
    }

    fn values(params: &[Parameter]) -> Vec<Vec<f32>> {
        params.iter().map(|p| p.value().to_vec::<f32>().unwrap()).collect()
    }

    #[test]
    fn one_shard_is_the_plain_step_bit_for_bit_and_survives_a_gather_and_scatter() {
        let mut rng = Rng::new(3);
        let mut plain = model(&mut rng);
        let copy =
            |p: &Parameter| Tensor::from_vec(p.value().to_vec::<f32>().unwrap(), p.value().shape()).unwrap();
        let mut sharded: Vec<Parameter> = plain.iter().map(|p| Parameter::new(p.name(), copy(p))).collect();
        let (mut plain_adamw, mut sharded_adamw) = (optimizer(), optimizer());
        let mut zero = Zero::new(&sharded.iter().collect::<Vec<_>>(), 0, 1).unwrap();
        // A clip norm of 1 clips every step (the norm of 26 unit normals is about 5).
        for step in 0..3 {
            let seed = rng.below(1 << 30);
            let mut grads = gradients(&plain, &mut Rng::new(seed));
            let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
            plain_adamw.step(&mut plain.iter_mut().collect::<Vec<_>>(), &grads, 1e-2).unwrap();
            let grads = gradients(&sharded, &mut Rng::new(seed));
            let refs: Vec<&Parameter> = sharded.iter().collect();
            // Buckets of 8 bytes: the shard is summed in 2-element pieces.
            let mine = zero.reduce_after_backward(&Single, &refs, &grads, 8).unwrap();
            let mut params: Vec<&mut Parameter> = sharded.iter_mut().collect();
            let zero_norm = zero.step(&Single, &mut sharded_adamw, &mut params, mine, 1e-2, 1.0).unwrap();
            assert_eq!(norm.to_bits(), zero_norm.to_bits(), "step {step}");
            assert_eq!(values(&plain), values(&sharded), "step {step}");
            if step == 1 {
                // Save and resume: the gathered state is the plain optimizer's, the scattered one continues.
                let refs: Vec<&Parameter> = sharded.iter().collect();
                let full = zero.gather_state(&Single, &sharded_adamw, &refs).unwrap();
                let [a, b] = [&plain_adamw, &full].map(|o| {
                    o.state_tensors()
                        .into_iter()
                        .map(|(n, t)| (n, t.to_vec::<f32>().unwrap()))
                        .collect::<Vec<_>>()
                });
                assert_eq!((a.len(), &a), (6, &b));
                sharded_adamw = optimizer();
                zero = Zero::new(&refs, 0, 1).unwrap();
                zero.scatter_state(&full, &mut sharded_adamw, &refs).unwrap();
                assert_eq!(sharded_adamw.step_count(), 2);
            }
        }
    }

    #[test]
    fn the_shards_of_several_ranks_cut_the_flat_layout_in_order_with_the_tail_padded() {
        // 12 + 5 + 6 = 23 elements over 3 ranks: shards of 8 (0..8, 8..16, 16..23 and one padding).
        let params = model(&mut Rng::new(1));
        let refs: Vec<&Parameter> = params.iter().collect();
        let shards: Vec<Zero> = (0..3).map(|rank| Zero::new(&refs, rank, 3).unwrap()).collect();
        let cut =
            |z: &Zero| z.segments.iter().map(|s| (s.tensor, s.within_tensor.clone())).collect::<Vec<_>>();
        assert_eq!(cut(&shards[0]), vec![(0, 0..8)]);
        assert_eq!(cut(&shards[1]), vec![(0, 8..12), (1, 0..4)]);
        assert_eq!(cut(&shards[2]), vec![(1, 4..5), (2, 0..6)]);
        assert!(shards.iter().all(|z| z.optimizer_bytes() == 2 * 8 * 4));
        let names: Vec<&str> = shards[1].pieces.iter().map(Parameter::name).collect();
        assert_eq!(names, ["p0", "p1"], "slices keep their parameter's name (weight decay by name)");
        let bf16 = Parameter::new("h", Tensor::zeros(&[2], DType::BF16));
        assert!(Zero::new(&[&bf16], 0, 2).unwrap_err().to_string().contains("f32 parameters on the CPU"));
    }
}
