//! The CPU attention cache (`AttentionCache`: keys and values in the head-major layout the CPU attention
//! kernel reads in place) against `Tensor::attention` on the same keys and values laid out as
//! `[1, len, heads, head_dim]`: after a prefill, decode appends and growth past the capacity, the two are
//! equal bit for bit, in f32 and f64 (the kernel runs the same per-head code on the same values; no
//! tolerance is needed, and any would hide a layout slip that moves a value by an ulp). The keys and
//! values read back are the appended ones, and bad appends and queries are errors that leave the cache
//! as it was.
use cola_tensor::{AttentionCache, DType, Rng, Tensor};

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, dtype, &mut Rng::new(seed))
}

#[test]
fn attention_against_the_cache_is_attention_on_its_positions_bit_for_bit() {
    // A head dim of 40 pads each value row to 64 (two tiles); 70 positions need three key tiles and two
    // growths from the first capacity (32 -> 64 -> 128).
    let (heads, head_dim, scale) = (3, 40, 0.37);
    for dtype in [DType::F32, DType::F64] {
        let mut cache = AttentionCache::new(heads, head_dim, 5, dtype).unwrap();
        assert_eq!((cache.len(), cache.capacity()), (0, 32));
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (step, new) in [5usize, 1, 1, 30, 1, 2, 29, 1].into_iter().enumerate() {
            let k = randn(&[1, new, heads, head_dim], dtype, 3 * step as u64);
            let v = randn(&[1, new, heads, head_dim], dtype, 3 * step as u64 + 1);
            let q = randn(&[1, new, heads, head_dim], dtype, 3 * step as u64 + 2);
            if cache.len() + new > cache.capacity() {
                let capacity = cache.capacity();
                cache.reserve((cache.len() + new).max(2 * capacity)).unwrap();
            }
            cache.append(&k, &v).unwrap();
            keys.push(k);
            values.push(v);
            let (all_k, all_v) = (Tensor::concat(&keys, 1).unwrap(), Tensor::concat(&values, 1).unwrap());
            let want = Tensor::attention(&q, &all_k, &all_v, scale).unwrap();
            let got = cache.attention(&q, scale).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_eq!(got.dtype(), dtype);
            assert_eq!(got.to_vec_f64(), want.to_vec_f64(), "{dtype:?} step {step}");
            let (got_k, got_v) = cache.keys_values().unwrap();
            assert_eq!(got_k.to_vec_f64(), all_k.to_vec_f64());
            assert_eq!(got_v.to_vec_f64(), all_v.to_vec_f64());
        }
        assert_eq!((cache.len(), cache.capacity()), (70, 128));
        let per_position = heads * head_dim + heads * 64;
        assert_eq!(cache.size_in_bytes(), 128 * per_position * dtype.size_in_bytes());
    }
}

#[test]
fn bad_appends_and_queries_are_errors_that_keep_the_cache() {
    let mut cache = AttentionCache::new(2, 4, 1, DType::F32).unwrap();
    let k = randn(&[1, 3, 2, 4], DType::F32, 1);
    cache.append(&k, &k).unwrap();
    let bad = [
        (randn(&[1, 1, 3, 4], DType::F32, 2), "another head count"),
        (randn(&[1, 1, 2, 4], DType::F64, 3), "another dtype"),
        (randn(&[1, 30, 2, 4], DType::F32, 4), "past the capacity"),
    ];
    for (t, what) in &bad {
        assert!(cache.append(t, t).is_err(), "{what}");
    }
    assert!(cache.append(&k, &randn(&[1, 2, 2, 4], DType::F32, 5)).is_err(), "keys and values differ");
    assert!(cache.attention(&randn(&[1, 4, 2, 4], DType::F32, 6), 1.0).is_err(), "q longer than the cache");
    assert!(cache.attention(&randn(&[2, 1, 2, 4], DType::F32, 7), 1.0).is_err(), "two sequences");
    assert!(AttentionCache::new(2, 4, 1, DType::BF16).is_err(), "bf16 is computed in f32");
    assert_eq!(cache.len(), 3);
    let (keys, values) = cache.keys_values().unwrap();
    assert_eq!(keys.to_vec_f64(), k.to_vec_f64());
    assert_eq!(values.to_vec_f64(), k.to_vec_f64());
}
