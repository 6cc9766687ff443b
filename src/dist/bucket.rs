//! Gradient buckets: every parameter's gradient laid end to end in one flat f32 sequence, cut into
//! buckets of a fixed number of elements, so that a step makes one collective call per bucket (a few for
//! a large model) instead of one per parameter (hundreds of small messages, each paying the network's
//! latency). A gradient may straddle two buckets; the layout depends only on the parameter sizes, so it
//! is the same on every rank.
use super::{Collective, DistError, Result};
use cola_autograd::{GradStore, Parameter};
use cola_tensor::{DType, Device, Tensor};
use std::ops::Range;

/// Bucket size of [`all_reduce_gradients`] in the trainer: 25 MiB of f32 (6.5M elements), PyTorch DDP's
/// default: large enough that the per-call latency is small against the transfer, small enough that
/// the staging buffer stays a fraction of the gradient of any model above 60m.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// The flat layout of a list of gradients of `sizes` elements, cut into buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    /// Where each gradient starts in the flat sequence (one more entry: the total).
    starts: Vec<usize>,
    /// Where each bucket starts (one more entry: the total).
    bounds: Vec<usize>,
}

/// A piece of one gradient inside one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Which gradient (index into the sizes the layout was built from).
    pub tensor: usize,
    /// Elements of that gradient.
    pub within_tensor: Range<usize>,
    /// Where they lie in the bucket.
    pub within_bucket: Range<usize>,
}

impl Buckets {
    /// The layout of gradients of `sizes` elements in buckets of `bucket_elements` (at least 1).
    pub fn new(sizes: &[usize], bucket_elements: usize) -> Result<Buckets> {
        Buckets::cut(sizes, bucket_elements, None)
    }

    /// [`Buckets::new`] with every bucket also cut where a shard of `shard_elements` ends, so that each
    /// bucket lies in one rank's shard (ZeRO's gradient sums, each to the rank that owns the bucket).
    pub fn cut(sizes: &[usize], bucket_elements: usize, shard_elements: Option<usize>) -> Result<Buckets> {
        if bucket_elements == 0 || shard_elements == Some(0) {
            return Err(DistError::Buckets("a bucket and a shard must hold at least one element".into()));
        }
        let mut starts = Vec::with_capacity(sizes.len() + 1);
        let mut total = 0usize;
        starts.push(0);
        for &size in sizes {
            total += size;
            starts.push(total);
        }
        let mut bounds: Vec<usize> = (0..total).step_by(bucket_elements).collect();
        if let Some(shard) = shard_elements {
            bounds.extend((0..total).step_by(shard));
            bounds.sort_unstable();
            bounds.dedup();
        }
        bounds.push(total);
        Ok(Buckets { starts, bounds })
    }

    /// Elements of every gradient together.
    pub fn total(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The flat elements gradient `tensor` occupies.
    pub fn span(&self, tensor: usize) -> Range<usize> {
        self.starts[tensor]..self.starts[tensor + 1]
    }

    /// Buckets of the layout (the last may be short; none when there is nothing to reduce).
    pub fn count(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The buckets gradient `tensor` has elements in (none for an empty one).
    pub fn buckets_of(&self, tensor: usize) -> Range<usize> {
        let span = self.span(tensor);
        if span.is_empty() {
            return 0..0;
        }
        // The last bucket starting at or before the span's start, to the first one starting at its end.
        let first = self.bounds.partition_point(|&b| b <= span.start) - 1;
        first..self.bounds.partition_point(|&b| b < span.end)
    }

    /// The flat elements bucket `bucket` holds.
    pub fn range(&self, bucket: usize) -> Range<usize> {
        self.bounds[bucket]..self.bounds[bucket + 1]
    }

    /// The pieces of gradients bucket `bucket` holds, in flat order.
    pub fn segments(&self, bucket: usize) -> Vec<Segment> {
        let range = self.range(bucket);
        let mut segments = Vec::new();
        // The first gradient that ends after the bucket starts.
        let first = self.starts.partition_point(|&start| start <= range.start).saturating_sub(1);
        for tensor in first..self.starts.len() - 1 {
            let (start, end) = (self.starts[tensor], self.starts[tensor + 1]);
            if start >= range.end {
                break;
            }
            let (lo, hi) = (start.max(range.start), end.min(range.end));
            if lo < hi {
                segments.push(Segment {
                    tensor,
                    within_tensor: lo - start..hi - start,
                    within_bucket: lo - range.start..hi - range.start,
                });
            }
        }
        segments
    }

    /// Copies bucket `bucket`'s pieces of `tensors` into `bucket_buffer` (at least as long as the bucket).
    pub fn flatten_into(&self, bucket: usize, tensors: &[Vec<f32>], bucket_buffer: &mut [f32]) {
        for s in self.segments(bucket) {
            bucket_buffer[s.within_bucket].copy_from_slice(&tensors[s.tensor][s.within_tensor]);
        }
    }

    /// Copies `bucket_buffer` back into bucket `bucket`'s pieces of `tensors`.
    pub fn unflatten_from(&self, bucket: usize, bucket_buffer: &[f32], tensors: &mut [Vec<f32>]) {
        for s in self.segments(bucket) {
            tensors[s.tensor][s.within_tensor].copy_from_slice(&bucket_buffer[s.within_bucket]);
        }
    }
}

/// Replaces every gradient in `grads` by its sum over the ranks of `collective`, through buckets of
/// `bucket_bytes`. Every parameter of `params` takes part, in that order (the same on every rank): a
/// parameter without a gradient on this rank (its micro-batches were all padding) contributes zeros,
/// so the layout never depends on the data. Gradients stay where they lie when the collective sums
/// device buffers ([`Collective::sums_on_device`]: NCCL, whose runs are on GPUs: each bucket is
/// assembled as one contiguous f32 tensor on the device, summed in place and written back), else they are
/// staged through host memory. Either way the sums go through [`Collective::sum_buckets`] or
/// [`Collective::sum_buckets_on_device`], as the path that overlaps backward sums them (`overlap.rs`).
/// Returns the bytes reduced.
pub fn all_reduce_gradients(
    collective: &dyn Collective,
    params: &[&Parameter],
    grads: &mut GradStore,
    bucket_bytes: usize,
) -> Result<usize> {
    super::overlap::sum_after_backward(collective, params, grads, bucket_bytes)
}

/// The elements of `tensor` as host f32 (a GPU or bf16 gradient is copied and widened).
pub(crate) fn host_f32(tensor: &Tensor) -> Result<Vec<f32>> {
    let tensor =
        if tensor.device() == Device::Cpu { tensor.clone() } else { tensor.to_device(Device::Cpu)? };
    let tensor = if tensor.dtype() == DType::F32 { tensor } else { tensor.to_dtype(DType::F32)? };
    Ok(tensor.to_vec::<f32>()?)
}

/// A tensor of `shape`, `dtype` on `device` holding `values`.
pub(crate) fn from_host_f32(
    values: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    let mut tensor = Tensor::from_vec(values, shape)?;
    if dtype != DType::F32 {
        tensor = tensor.to_dtype(dtype)?;
    }
    if device != Device::Cpu {
        tensor = tensor.to_device(device)?;
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    //! The layout is pure index arithmetic, so the tests are exact: every element of a gradient lands in
    //! exactly one bucket position and comes back to where it was. The two reduction paths are compared
    //! on a world of two identical ranks, where a sum is a doubling: exact in f32 and bf16, so the host
    //! and device paths must agree bit for bit.
    use super::*;
    use cola_tensor::Rng;

    /// Rank 0 of two ranks holding the same values: every sum doubles, through host buffers or in
    /// tensors (the device path, here on CPU tensors: the same assembly as on a GPU).
    #[derive(Debug)]
    struct TwinRanks {
        on_device: bool,
    }

    impl Collective for TwinRanks {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<()> {
            buffer.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
            values.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn sums_on_device(&self) -> bool {
            self.on_device
        }
        fn all_reduce_sum_on_device(&self, buffer: &mut Tensor) -> Result<()> {
            *buffer = buffer.mul_scalar(2.0)?;
            Ok(())
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

    #[test]
    fn the_device_path_sums_as_the_host_path_does() {
        let mut rng = Rng::new(7);
        let shapes: [(&[usize], DType); 4] =
            [(&[3, 4], DType::F32), (&[5], DType::BF16), (&[2, 3], DType::F32), (&[7], DType::F32)];
        let params: Vec<Parameter> = shapes
            .iter()
            .enumerate()
            .map(|(i, (shape, dtype))| Parameter::new(format!("p{i}"), Tensor::zeros(shape, *dtype)))
            .collect();
        let refs: Vec<&Parameter> = params.iter().collect();
        let mut grads = GradStore::new();
        for (param, (shape, dtype)) in params.iter().zip(shapes) {
            if shape != [2, 3] {
                // The third parameter has no gradient on this rank: it contributes zeros.
                grads.set(param.id(), Tensor::randn(shape, 0.0, 1.0, dtype, &mut rng));
            }
        }
        for bucket_elements in [1, 4, 6, 1000] {
            let mut summed = [grads.clone(), grads.clone()];
            for (store, on_device) in summed.iter_mut().zip([false, true]) {
                let bytes = all_reduce_gradients(&TwinRanks { on_device }, &refs, store, bucket_elements * 4);
                assert_eq!(bytes.unwrap(), (12 + 5 + 6 + 7) * 4);
            }
            for (param, (shape, dtype)) in params.iter().zip(shapes) {
                let [host, device] = [&summed[0], &summed[1]].map(|s| s.get(param.id()).unwrap().clone());
                let twice: Vec<f64> = grads
                    .get(param.id())
                    .map_or(vec![0.0; host.numel()], |g| g.to_vec_f64().iter().map(|x| 2.0 * x).collect());
                assert_eq!((device.dtype(), device.shape()), (dtype, shape), "{}", param.name());
                assert_eq!(
                    host.to_vec_f64(),
                    twice,
                    "host path, {}, buckets of {bucket_elements}",
                    param.name()
                );
                assert_eq!(
                    device.to_vec_f64(),
                    twice,
                    "device path, {}, buckets of {bucket_elements}",
                    param.name()
                );
            }
        }
    }

    fn segment(tensor: usize, within_tensor: Range<usize>, within_bucket: Range<usize>) -> Segment {
        Segment { tensor, within_tensor, within_bucket }
    }

    #[test]
    fn bucket_boundaries_cut_gradients_where_the_elements_fall() {
        // Gradients of 3, 5 and 2 elements (flat 0..3, 3..8, 8..10) in buckets of 4: 0..4, 4..8, 8..10.
        let buckets = Buckets::new(&[3, 5, 2], 4).unwrap();
        assert_eq!((buckets.total(), buckets.count()), (10, 3));
        assert_eq!([buckets.range(0), buckets.range(1), buckets.range(2)], [0..4, 4..8, 8..10]);
        assert_eq!(buckets.segments(0), vec![segment(0, 0..3, 0..3), segment(1, 0..1, 3..4)]);
        assert_eq!(buckets.segments(1), vec![segment(1, 1..5, 0..4)]);
        assert_eq!(buckets.segments(2), vec![segment(2, 0..2, 0..2)]);
    }

    #[test]
    fn one_bucket_holds_everything_when_large_and_empty_gradients_take_no_place() {
        let buckets = Buckets::new(&[4, 0, 6], 1 << 20).unwrap();
        assert_eq!((buckets.count(), buckets.range(0)), (1, 0..10));
        assert_eq!(buckets.segments(0), vec![segment(0, 0..4, 0..4), segment(2, 0..6, 4..10)]);
        assert_eq!(Buckets::new(&[], 8).unwrap().count(), 0);
        assert!(Buckets::new(&[1], 0).is_err());
        // Buckets of 5 (0..5, 5..10) also cut where shards of 4 end (4, 8): 0..4, 4..5, 5..8, 8..10.
        let cut = Buckets::cut(&[4, 0, 6], 5, Some(4)).unwrap();
        assert_eq!((0..cut.count()).map(|b| cut.range(b)).collect::<Vec<_>>(), [0..4, 4..5, 5..8, 8..10]);
        assert_eq!([cut.buckets_of(0), cut.buckets_of(1), cut.buckets_of(2)], [0..1, 0..0, 1..4]);
    }

    #[test]
    fn flatten_then_unflatten_is_the_identity_and_every_element_is_in_one_bucket() {
        let sizes = [7usize, 1, 13, 4, 9];
        let tensors: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(t, &n)| (0..n).map(|i| (t * 100 + i) as f32).collect()).collect();
        for bucket_elements in [1, 3, 5, 8, 34, 100] {
            let buckets = Buckets::new(&sizes, bucket_elements).unwrap();
            let mut flat = Vec::new();
            let mut back: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![-1.0; n]).collect();
            for bucket in 0..buckets.count() {
                let mut buffer = vec![0.0; buckets.range(bucket).len()];
                buckets.flatten_into(bucket, &tensors, &mut buffer);
                flat.extend_from_slice(&buffer);
                buckets.unflatten_from(bucket, &buffer, &mut back);
            }
            assert_eq!(back, tensors, "round trip with buckets of {bucket_elements}");
            assert_eq!(flat, tensors.concat(), "flat order with buckets of {bucket_elements}");
            assert_eq!(buckets.count(), 34usize.div_ceil(bucket_elements));
        }
    }
}
