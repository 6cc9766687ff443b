//! Gradient sums that overlap backward. On the last micro-batch of an update the tape hands each
//! parameter's gradient over as soon as it is final ([`cola_autograd::Tape::backward_with`]); the trainer
//! adds it to the accumulated gradient and marks it here, and each bucket of the flat layout of
//! `bucket.rs` starts its sum over the ranks once every gradient it holds is final, while backward goes on
//! through the earlier layers. The trainer waits for every sum before clipping.
//!
//! The sums are those of the plain path bit for bit: the same layout, the same bucket contents and the
//! same collective call per bucket ([`Collective::sum_buckets`]); only the moment each starts differs.
//! Every rank must start the same buckets in the same order (MPI matches collective calls by order), so
//! buckets start in one fixed order, last to first (the order backward finishes them in a model whose
//! parameters are listed input to output), a bucket waiting for its predecessor in that order even
//! when it is ready first. Which gradients are final when is then a matter of timing alone.
//!
//! A collective that sums where the gradients lie (NCCL, [`Collective::sums_on_device`]) is handed each
//! bucket as an f32 tensor on the gradients' device, assembled by copies on the device's stream
//! ([`BucketSums::start_on_device`]); the host path fills host buffers. Both go through the same
//! readiness counting and bucket order, and the summed buckets come back as [`Summed`].
use super::bucket::{from_host_f32, host_f32, Buckets};
use super::{Collective, DistError, Result};
use cola_autograd::{GradStore, ParamId, Parameter};
use cola_tensor::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;

/// Bucket sums that may be in flight together ([`Collective::sum_buckets`]).
pub trait BucketSums {
    /// Starts the sum over the ranks of bucket `bucket`, whose elements `fill` writes (every element of
    /// the slice it is given). Each bucket starts once; every rank starts the buckets in the same order.
    fn start(&mut self, bucket: usize, fill: &mut dyn FnMut(&mut [f32])) -> Result<()>;

    /// Lets the sums in flight progress (MPI advances non-blocking collectives inside its calls).
    fn progress(&mut self) -> Result<()> {
        Ok(())
    }

    /// Whether the buckets are device tensors ([`BucketSums::start_on_device`]) rather than host buffers
    /// ([`BucketSums::start`]).
    fn on_device(&self) -> bool {
        false
    }

    /// Starts the sum over the ranks of bucket `bucket`, given as a contiguous 1-D f32 tensor on this
    /// rank's device whose filling copies are queued on the device's stream. The sums keep the tensor
    /// until they hand it back, summed.
    fn start_on_device(&mut self, bucket: usize, _buffer: Tensor) -> Result<()> {
        Err(DistError::Buckets(format!("bucket {bucket}: these bucket sums take host buffers")))
    }
}

/// The summed buckets of one update, in bucket order: host buffers, or f32 tensors on the gradients'
/// device (under ZeRO-1 only the buckets this rank owns hold sums).
#[derive(Debug)]
pub enum Summed {
    Host(Vec<Vec<f32>>),
    Device(Vec<Tensor>),
}

impl Summed {
    fn len(&self) -> usize {
        match self {
            Summed::Host(buckets) => buckets.len(),
            Summed::Device(buckets) => buckets.len(),
        }
    }
}

/// Sums buckets of `sizes` elements over the ranks of `collective` while `body` starts them
/// ([`Collective::sum_buckets`]), as device tensors when the collective sums where the gradients lie
/// ([`Collective::sum_buckets_on_device`]).
pub fn sum_buckets(
    collective: &dyn Collective,
    sizes: &[usize],
    owners: Option<&[usize]>,
    body: &mut dyn FnMut(&mut dyn BucketSums) -> Result<()>,
) -> Result<Summed> {
    if collective.sums_on_device() {
        return Ok(Summed::Device(collective.sum_buckets_on_device(sizes, owners, body)?));
    }
    Ok(Summed::Host(collective.sum_buckets(sizes, owners, body)?))
}

/// Which buckets of an update's gradients are ready and which have started.
#[derive(Debug)]
pub struct ReadyBuckets {
    layout: Buckets,
    /// The parameters in model order: identity, shape, and the dtype and device of their values (those
    /// of a sum written back where this rank had no gradient).
    params: Vec<(ParamId, Vec<usize>, DType, Device)>,
    /// Index of each parameter in model order.
    index: HashMap<ParamId, usize>,
    /// Buckets each parameter has elements in.
    touches: Vec<Range<usize>>,
    /// Per bucket: gradients in it that are not final yet.
    missing: Vec<usize>,
    is_final: Vec<bool>,
    /// Buckets started so far (they start from the last).
    started: usize,
    /// Of those, the buckets started before backward ended (by [`ReadyBuckets::start_ready`] without
    /// `all`).
    early: usize,
    /// Under ZeRO-1: the elements of each rank's shard, and the rank whose shard each bucket lies in.
    shards: Option<(usize, Vec<usize>)>,
}

impl ReadyBuckets {
    /// The layout of `params`' gradients (model order, the same on every rank) in buckets of
    /// `bucket_bytes`, with no gradient final yet. With `shard` (ZeRO-1's shard elements), buckets are
    /// also cut where a shard ends and each one's sum goes to the rank whose shard it lies in.
    pub fn new(params: &[&Parameter], bucket_bytes: usize, shard: Option<usize>) -> Result<ReadyBuckets> {
        let sizes: Vec<usize> = params.iter().map(|p| p.value().numel()).collect();
        let layout = Buckets::cut(&sizes, (bucket_bytes / size_of::<f32>()).max(1), shard)?;
        let shards = shard.map(|s| (s, (0..layout.count()).map(|b| layout.range(b).start / s).collect()));
        let mut missing = vec![0; layout.count()];
        let touches: Vec<Range<usize>> = (0..params.len()).map(|t| layout.buckets_of(t)).collect();
        for range in &touches {
            missing[range.clone()].iter_mut().for_each(|m| *m += 1);
        }
        let index = params.iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
        let is_final = vec![false; params.len()];
        let params = params
            .iter()
            .map(|p| (p.id(), p.value().shape().to_vec(), p.value().dtype(), p.value().device()))
            .collect();
        Ok(ReadyBuckets { layout, params, index, touches, missing, is_final, started: 0, early: 0, shards })
    }

    /// Elements of each bucket.
    pub fn sizes(&self) -> Vec<usize> {
        (0..self.layout.count()).map(|b| self.layout.range(b).len()).collect()
    }

    /// The rank each bucket's sum goes to under ZeRO-1 (`None`: every rank).
    pub fn owners(&self) -> Option<&[usize]> {
        self.shards.as_ref().map(|(_, owners)| &owners[..])
    }

    /// Starts every bucket not started yet and waits for every sum: the path without overlap, after
    /// backward, through the same collective calls as the overlapped one.
    pub fn sum_after_backward(&mut self, collective: &dyn Collective, grads: &GradStore) -> Result<Summed> {
        let sizes = self.sizes();
        let owners = self.owners().map(<[usize]>::to_vec);
        sum_buckets(collective, &sizes, owners.as_deref(), &mut |sums| self.start_ready(sums, grads, true))
    }

    /// Under ZeRO-1: `rank`'s shard of the summed gradient as a 1-D f32 tensor (the buckets it owns, in
    /// place; the padding after the last gradient zero), on the CPU or, for device buckets, on their
    /// device.
    pub fn owned_shard(&self, summed: &Summed, rank: usize) -> Result<Tensor> {
        let Some((shard, owners)) = &self.shards else {
            return Err(DistError::Buckets("the buckets were not cut into shards".into()));
        };
        self.check_complete(summed)?;
        let mine = |bucket: usize| {
            let range = self.layout.range(bucket);
            range.start - rank * shard..range.end - rank * shard
        };
        match summed {
            Summed::Host(buckets) => {
                let mut values = vec![0.0f32; *shard];
                for (bucket, sum) in buckets.iter().enumerate().filter(|(b, _)| owners[*b] == rank) {
                    values[mine(bucket)].copy_from_slice(sum);
                }
                Ok(Tensor::from_vec(values, &[*shard])?)
            }
            Summed::Device(buckets) => {
                let device = self.params.first().map_or(Device::Cpu, |p| p.3);
                let mut values = Tensor::zeros_on(&[*shard], DType::F32, device)?;
                for (bucket, sum) in buckets.iter().enumerate().filter(|(b, _)| owners[*b] == rank) {
                    values.write_slice(0, mine(bucket).start, sum)?;
                }
                Ok(values)
            }
        }
    }

    fn check_complete(&self, summed: &Summed) -> Result<()> {
        if self.started != self.layout.count() || summed.len() != self.layout.count() {
            return Err(DistError::Buckets(format!(
                "{} of {} bucket sums were started, {} came back",
                self.started,
                self.layout.count(),
                summed.len()
            )));
        }
        Ok(())
    }

    /// Buckets started while backward ran: their sums overlapped it.
    pub fn started_early(&self) -> usize {
        self.early
    }

    /// Bytes of gradient every rank contributes.
    pub fn bytes(&self) -> usize {
        self.layout.total() * size_of::<f32>()
    }

    /// Records that parameter `id`'s gradient in the accumulated store is final.
    pub fn mark_final(&mut self, id: ParamId) -> Result<()> {
        let &t = self
            .index
            .get(&id)
            .ok_or_else(|| DistError::Buckets("a gradient of a parameter outside the model".into()))?;
        if !std::mem::replace(&mut self.is_final[t], true) {
            self.missing[self.touches[t].clone()].iter_mut().for_each(|m| *m -= 1);
        }
        Ok(())
    }

    /// The next bucket to start, if every gradient in it is final (`all`: whether or not).
    fn next(&self, all: bool) -> Option<usize> {
        let bucket = self.layout.count().checked_sub(self.started + 1)?;
        (all || self.missing[bucket] == 0).then_some(bucket)
    }

    /// Starts, in order, every bucket whose gradients are final, reading them from `grads` (a parameter
    /// of `params` without one contributes zeros); with `all`, every bucket not started yet (after
    /// backward: whatever is not marked has no gradient in this update).
    pub fn start_ready(&mut self, sums: &mut dyn BucketSums, grads: &GradStore, all: bool) -> Result<()> {
        while let Some(bucket) = self.next(all) {
            if sums.on_device() {
                sums.start_on_device(bucket, self.device_bucket(bucket, grads)?)?;
                self.started += 1;
                self.early += usize::from(!all);
                continue;
            }
            let mut failed = None;
            let (layout, params) = (&self.layout, &self.params);
            sums.start(bucket, &mut |buffer| {
                for s in layout.segments(bucket) {
                    let piece = &mut buffer[s.within_bucket];
                    match grads.get(params[s.tensor].0).map(host_f32) {
                        Some(Ok(values)) => piece.copy_from_slice(&values[s.within_tensor]),
                        Some(Err(e)) => failed = Some(e),
                        None => piece.fill(0.0),
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            self.started += 1;
            self.early += usize::from(!all);
        }
        Ok(())
    }

    /// Bucket `bucket` of the gradients in `grads` as a 1-D f32 tensor on the device of its parameters'
    /// values: each piece narrowed from its gradient, widened and copied into place (zeros for a
    /// parameter without a gradient), every copy on the device.
    fn device_bucket(&self, bucket: usize, grads: &GradStore) -> Result<Tensor> {
        let segments = self.layout.segments(bucket);
        let device = segments.first().map_or(Device::Cpu, |s| self.params[s.tensor].3);
        let mut buffer = Tensor::zeros_on(&[self.layout.range(bucket).len()], DType::F32, device)?;
        for s in segments {
            let Some(grad) = grads.get(self.params[s.tensor].0) else { continue };
            let flat = grad.reshape(&[grad.numel()])?;
            let piece = flat.narrow(0, s.within_tensor.start, s.within_tensor.len())?.to_dtype(DType::F32)?;
            buffer.write_slice(0, s.within_bucket.start, &piece)?;
        }
        Ok(buffer)
    }

    /// Replaces every gradient in `grads` by its sum, from the summed buckets, in the dtype and on the
    /// device it had (a parameter without one gets the sum, in its value's dtype and device).
    pub fn write_back(&self, summed: &Summed, grads: &mut GradStore) -> Result<()> {
        self.check_complete(summed)?;
        let buckets = match summed {
            Summed::Host(buckets) => buckets,
            Summed::Device(buckets) => return self.write_back_on_device(buckets, grads),
        };
        let mut host: Vec<Vec<f32>> =
            (0..self.params.len()).map(|t| vec![0.0; self.layout.span(t).len()]).collect();
        for (bucket, values) in buckets.iter().enumerate() {
            self.layout.unflatten_from(bucket, values, &mut host);
        }
        for ((id, shape, dtype, device), values) in self.params.iter().zip(host) {
            let (dtype, device) = grads.get(*id).map_or((*dtype, *device), |g| (g.dtype(), g.device()));
            grads.set(*id, from_host_f32(values, shape, dtype, device)?);
        }
        Ok(())
    }

    /// [`ReadyBuckets::write_back`] of device buckets: each gradient is assembled from its pieces on the
    /// device and narrowed to its dtype there; nothing crosses to the host.
    fn write_back_on_device(&self, buckets: &[Tensor], grads: &mut GradStore) -> Result<()> {
        let mut flat = Vec::with_capacity(self.params.len());
        for (t, (_, _, _, device)) in self.params.iter().enumerate() {
            flat.push(Tensor::zeros_on(&[self.layout.span(t).len()], DType::F32, *device)?);
        }
        for (bucket, values) in buckets.iter().enumerate() {
            for s in self.layout.segments(bucket) {
                let piece = values.narrow(0, s.within_bucket.start, s.within_bucket.len())?;
                flat[s.tensor].write_slice(0, s.within_tensor.start, &piece)?;
            }
        }
        for ((id, shape, dtype, _), summed) in self.params.iter().zip(flat) {
            let dtype = grads.get(*id).map_or(*dtype, Tensor::dtype);
            grads.set(*id, summed.reshape(shape)?.to_dtype(dtype)?);
        }
        Ok(())
    }
}

/// [`Collective::sum_buckets`] of a collective without non-blocking sums: each bucket is summed with
/// [`Collective::all_reduce_sum`] as it starts.
pub(crate) struct Blocking<'c> {
    pub sum: &'c dyn Fn(&mut [f32]) -> Result<()>,
    pub buffers: Vec<Vec<f32>>,
}

impl BucketSums for Blocking<'_> {
    fn start(&mut self, bucket: usize, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        let buffer = self
            .buffers
            .get_mut(bucket)
            .ok_or_else(|| DistError::Buckets(format!("there is no bucket {bucket}")))?;
        fill(buffer);
        (self.sum)(buffer)
    }
}

/// [`Collective::sum_buckets_on_device`] of a collective without non-blocking sums: each bucket is summed
/// with [`Collective::all_reduce_sum_on_device`] as it starts.
pub(crate) struct DeviceBlocking<'c> {
    pub sum: &'c dyn Fn(&mut Tensor) -> Result<()>,
    pub buffers: Vec<Option<Tensor>>,
}

impl BucketSums for DeviceBlocking<'_> {
    fn start(&mut self, bucket: usize, _fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        Err(DistError::Buckets(format!("bucket {bucket}: these bucket sums take device tensors")))
    }

    fn on_device(&self) -> bool {
        true
    }

    fn start_on_device(&mut self, bucket: usize, mut buffer: Tensor) -> Result<()> {
        let slot = self.buffers.get_mut(bucket).filter(|slot| slot.is_none()).ok_or_else(|| {
            DistError::Buckets(format!("bucket {bucket} does not exist or has started already"))
        })?;
        (self.sum)(&mut buffer)?;
        *slot = Some(buffer);
        Ok(())
    }
}

/// The buckets of `buffers` in order, once every one has started.
pub(crate) fn started_buckets(buffers: Vec<Option<Tensor>>) -> Result<Vec<Tensor>> {
    let count = buffers.len();
    let started: Vec<Tensor> = buffers.into_iter().flatten().collect();
    if started.len() != count {
        return Err(DistError::Buckets(format!("{} of {count} device buckets were started", started.len())));
    }
    Ok(started)
}

/// Sums every gradient of `params` over the ranks after backward (the path without overlap): every
/// bucket starts at once, in the order the overlapped path starts them. Returns the bytes reduced.
pub fn sum_after_backward(
    collective: &dyn Collective,
    params: &[&Parameter],
    grads: &mut GradStore,
    bucket_bytes: usize,
) -> Result<usize> {
    let mut ready = ReadyBuckets::new(params, bucket_bytes, None)?;
    let summed = ready.sum_after_backward(collective, grads)?;
    ready.write_back(&summed, grads)?;
    Ok(ready.bytes())
}

#[cfg(test)]
mod tests {
    //! Readiness is counting: a bucket starts when its last gradient is final and not before its
    //! successor; a gradient straddling two buckets holds both. Exact comparisons throughout.
    use super::*;
    use cola_tensor::{DType, Tensor};

    /// Records the order buckets start in and what they hold.
    #[derive(Default)]
    struct Recorder {
        started: Vec<(usize, Vec<f32>)>,
    }

    impl BucketSums for Recorder {
        fn start(&mut self, bucket: usize, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
            let mut buffer = vec![f32::NAN; 4];
            fill(&mut buffer);
            self.started.push((bucket, buffer));
            Ok(())
        }
    }

    /// Records the order device buckets start in and what they hold.
    #[derive(Default)]
    struct DeviceRecorder {
        started: Vec<(usize, Vec<f32>)>,
    }

    impl BucketSums for DeviceRecorder {
        fn start(&mut self, _bucket: usize, _fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
            unreachable!("device sums are handed tensors")
        }
        fn on_device(&self) -> bool {
            true
        }
        fn start_on_device(&mut self, bucket: usize, buffer: Tensor) -> Result<()> {
            assert_eq!((buffer.dtype(), buffer.shape()), (DType::F32, &[4][..]));
            self.started.push((bucket, buffer.to_vec::<f32>()?));
            Ok(())
        }
    }

    /// Device buckets (NCCL's, here CPU tensors) start when host buffers would, holding the same
    /// elements: a bf16 gradient widened, a missing one as zeros; the summed tensors are written back
    /// and cut into a ZeRO-1 shard as the host buffers are.
    #[test]
    fn device_buckets_start_as_host_buffers_do_with_the_same_elements() {
        let dtypes = [DType::F32, DType::BF16, DType::F32];
        let params: Vec<Parameter> = [3, 3, 2]
            .iter()
            .zip(dtypes)
            .enumerate()
            .map(|(i, (&n, dtype))| Parameter::new(format!("p{i}"), Tensor::zeros(&[n], dtype)))
            .collect();
        let refs: Vec<&Parameter> = params.iter().collect();
        let mut grads = GradStore::new();
        for (i, p) in params.iter().enumerate().take(2) {
            let n = p.value().numel();
            let values = Tensor::from_vec((0..n).map(|k| (10 * i + k) as f32).collect(), &[n]).unwrap();
            grads.set(p.id(), values.to_dtype(dtypes[i]).unwrap());
        }
        let (mut host, mut device) = (Recorder::default(), DeviceRecorder::default());
        // Shards of 4 elements: buckets 0..4 (rank 0) and 4..8 (rank 1).
        let [mut on_host, mut on_device] = [0; 2].map(|_| ReadyBuckets::new(&refs, 16, Some(4)).unwrap());
        for id in [params[2].id(), params[1].id()] {
            on_host.mark_final(id).unwrap();
            on_device.mark_final(id).unwrap();
            on_host.start_ready(&mut host, &grads, false).unwrap();
            on_device.start_ready(&mut device, &grads, false).unwrap();
            assert_eq!(device.started, host.started);
        }
        assert_eq!(device.started, vec![(1, vec![11.0, 12.0, 0.0, 0.0])]);
        on_device.start_ready(&mut device, &grads, true).unwrap();
        assert_eq!(device.started[1], (0, vec![0.0, 1.0, 2.0, 10.0]));
        assert_eq!((on_device.started_early(), on_device.owners()), (1, Some(&[0, 1][..])));

        let in_order = |started: &[(usize, Vec<f32>)]| {
            let mut buckets = started.to_vec();
            buckets.sort_by_key(|(bucket, _)| *bucket);
            buckets.into_iter().map(|(_, values)| Tensor::from_vec(values, &[4]).unwrap()).collect()
        };
        let summed = Summed::Device(in_order(&device.started));
        assert_eq!(
            on_device.owned_shard(&summed, 1).unwrap().to_vec::<f32>().unwrap(),
            [11.0, 12.0, 0.0, 0.0]
        );
        on_device.write_back(&summed, &mut grads).unwrap();
        let back: Vec<(DType, Vec<f32>)> = params
            .iter()
            .map(|p| {
                let g = grads.get(p.id()).unwrap();
                (g.dtype(), g.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap())
            })
            .collect();
        let want = [
            (DType::F32, vec![0.0, 1.0, 2.0]),
            (DType::BF16, vec![10.0, 11.0, 12.0]),
            (DType::F32, vec![0.0; 2]),
        ];
        assert_eq!(back, want);
    }

    #[test]
    fn buckets_start_last_first_once_their_gradients_are_final() {
        // Parameters of 3, 3 and 2 elements (flat 0..3, 3..6, 6..8) in buckets of 4: 0..4, 4..8.
        let params: Vec<Parameter> = [3, 3, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| Parameter::new(format!("p{i}"), Tensor::zeros(&[n], DType::F32)))
            .collect();
        let refs: Vec<&Parameter> = params.iter().collect();
        let mut grads = GradStore::new();
        for (i, p) in params.iter().enumerate() {
            let n = p.value().numel();
            grads.set(p.id(), Tensor::from_vec((0..n).map(|k| (10 * i + k) as f32).collect(), &[n]).unwrap());
        }
        let mut ready = ReadyBuckets::new(&refs, 16, None).unwrap();
        assert_eq!(ready.sizes(), [4, 4]);
        let mut sums = Recorder::default();
        // p0 is final, but bucket 0 waits for bucket 1, which waits for p1 (straddling) and p2.
        ready.mark_final(params[0].id()).unwrap();
        ready.start_ready(&mut sums, &grads, false).unwrap();
        ready.mark_final(params[2].id()).unwrap();
        ready.start_ready(&mut sums, &grads, false).unwrap();
        assert!(sums.started.is_empty());
        ready.mark_final(params[1].id()).unwrap();
        ready.mark_final(params[1].id()).unwrap(); // marking twice counts once
        ready.start_ready(&mut sums, &grads, false).unwrap();
        assert_eq!(sums.started, vec![(1, vec![11.0, 12.0, 20.0, 21.0]), (0, vec![0.0, 1.0, 2.0, 10.0])]);
        assert_eq!(ready.started_early(), 2);

        // After backward, buckets start whatever is marked; a missing gradient contributes zeros.
        let mut ready = ReadyBuckets::new(&refs, 16, None).unwrap();
        let mut sums = Recorder::default();
        let mut partial = GradStore::new();
        partial.set(params[0].id(), grads.get(params[0].id()).unwrap().clone());
        assert!(ready.write_back(&Summed::Host(vec![]), &mut partial).is_err(), "nothing started yet");
        ready.start_ready(&mut sums, &partial, true).unwrap();
        assert_eq!(sums.started, vec![(1, vec![0.0; 4]), (0, vec![0.0, 1.0, 2.0, 0.0])]);
        assert_eq!(ready.started_early(), 0);
        let summed = Summed::Host(vec![sums.started[1].1.clone(), sums.started[0].1.clone()]);
        ready.write_back(&summed, &mut partial).unwrap();
        let back: Vec<Vec<f32>> =
            params.iter().map(|p| partial.get(p.id()).unwrap().to_vec::<f32>().unwrap()).collect();
        assert_eq!(back, vec![vec![0.0, 1.0, 2.0], vec![0.0; 3], vec![0.0; 2]]);
        let stranger = Parameter::new("x", Tensor::zeros(&[1], DType::F32));
        assert!(ready.mark_final(stranger.id()).is_err());
    }
}
