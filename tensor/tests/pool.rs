//! The host buffer pool: a freed buffer serves the next output of its dtype and size, an op that
//! overwrites its output gives the same bits on a recycled buffer as on a fresh one, an op that accumulates
//! gets zeros even when the recycled buffer held other values, the pool holds no more than its cap (twice
//! the peak live bytes), a returned buffer that does not fit evicts the sizes used longest ago rather than
//! being turned away, live bytes count tensors only, and turning the pool off empties it.
//!
//! The pool is process-wide, so everything runs in this one test (its own test binary) and counters are
//! compared as differences. Exact equality throughout: recycling must not change a single bit. Under 0.1 s.
use cola_tensor::pool::{self, PoolStats};
use cola_tensor::{DType, Rng, Tensor};

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn pool_recycles_exactly_and_stays_bounded() {
    pool::set_enabled(true);
    let mut rng = Rng::new(11);
    let x = Tensor::randn(&[64, 48], 0.0, 1.0, DType::F32, &mut rng);

    // Live bytes: a new [64, 48] f32 tensor adds 64 * 48 * 4 bytes, dropping it removes them.
    let before = pool::stats();
    let y = x.exp().unwrap();
    let during = pool::stats();
    assert_eq!(during.live_bytes - before.live_bytes, 64 * 48 * 4);
    let first = bits(&y);
    drop(y);
    let after = pool::stats();
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(after.pooled_bytes - during.pooled_bytes, 64 * 48 * 4, "the freed buffer is pooled");

    // The next output of that size takes the pooled buffer and overwrites it: same bits as before.
    let s = pool::stats();
    let again = x.exp().unwrap();
    assert_eq!(pool::stats().hits, s.hits + 1);
    assert_eq!(bits(&again), first);
    // A different op on the recycled buffer of `again` (a sum that assigns every output).
    drop(again);
    let sum_rows = Tensor::randn(&[64, 48, 1], 0.0, 1.0, DType::F32, &mut rng);
    let expected = sum_rows.to_vec::<f32>().unwrap(); // a sum over one element is that element
    let s = pool::stats();
    let summed = sum_rows.sum(&[2], false).unwrap();
    assert_eq!(pool::stats().hits, s.hits + 1, "the [64, 48] output reuses the pooled buffer");
    assert_eq!(summed.to_vec::<f32>().unwrap(), expected);
    drop(summed);

    // An accumulating op on a recycled buffer full of sevens: rows no id selects must be zero.
    let (vocab, dim) = (64, 48);
    drop(Tensor::full(&[vocab, dim], 7.0, DType::F32));
    let grad_out = Tensor::ones(&[2, dim], DType::F32);
    let s = pool::stats();
    let gw = Tensor::embedding_backward(&grad_out, &[3, 3], vocab, None).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(pool::stats().hits, s.hits + 1);
    for (i, &g) in gw.iter().enumerate() {
        assert_eq!(g, if i / dim == 3 { 2.0 } else { 0.0 }, "element {i}");
    }

    // Bounded: after freeing many buffers the pool holds no more than the cap (twice the peak live bytes).
    let many: Vec<Tensor> = (1..40).map(|n| Tensor::zeros(&[n, 1000], DType::F64)).collect();
    drop(many);
    let s: PoolStats = pool::stats();
    assert_eq!(pool::cap_bytes(), 2 * s.peak_live_bytes);
    assert!(s.pooled_bytes <= pool::cap_bytes(), "{s:?}");
    assert!(s.pooled_bytes > 0);

    // Eviction: twelve buffers of new sizes, each a quarter of the peak (so live bytes never pass the
    // peak and the cap stays put), returned one after another: three peaks' worth into a pool of two.
    // Every one is pooled, the oldest sizes leave to make room, and the pool stays within its cap.
    let peak = s.peak_live_bytes;
    let quarter = peak / 4 / 8; // f64 elements
    let sizes: Vec<usize> = (0..12).map(|i| quarter - 1 - i).collect();
    for &n in &sizes {
        drop(Tensor::zeros(&[n], DType::F64));
        let s = pool::stats();
        assert!(s.pooled_bytes <= pool::cap_bytes(), "{s:?}");
        assert_eq!(s.peak_live_bytes, peak, "the test keeps the peak, and so the cap, fixed");
    }
    // An op whose output has the newest size takes the pooled buffer; the oldest size was evicted.
    let taken = |n: usize| {
        let input = Tensor::zeros(&[n], DType::F64);
        let s = pool::stats();
        drop(input.exp().unwrap());
        pool::stats().hits == s.hits + 1
    };
    assert!(taken(sizes[11]), "the newest size is pooled");
    assert!(!taken(sizes[0]), "the oldest size was evicted");

    // Off: the pool empties, and outputs are fresh (no hits) and still correct.
    pool::set_enabled(false);
    assert_eq!(pool::stats().pooled_bytes, 0);
    let s = pool::stats();
    let fresh = x.exp().unwrap();
    assert_eq!(pool::stats().hits, s.hits);
    assert_eq!(bits(&fresh), first);
    drop(fresh);
    assert_eq!(pool::stats().pooled_bytes, 0, "a disabled pool keeps nothing");
}
