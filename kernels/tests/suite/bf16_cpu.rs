//! The CPU bf16 paths against their definitions, bit for bit (no tolerance: each path promises the exact
//! bits of "widen to f32, run the f32 kernel, round once to nearest even"):
//! - `round_one` / `round` equal `half::bf16::from_f32` on edge classes (zeros, subnormals, ties, the
//!   largest finite values that round to infinity, infinities, signalling and quiet NaNs) and on random
//!   bit patterns, and `widen` is exact, on every SIMD level this CPU has;
//! - `adamw_step_bf16` equals `adamw_step::<f32>` on the widened values followed by rounding, and
//!   `adamw_step_mixed` equals widening the gradient, `adamw_step::<f32>` on the master and rounding the
//!   master, over zeros, tiny second moments, large steps and odd lengths (across the parallel grain);
//! - `map_chunks_par` (two outputs) and `map_in_place` give the element-wise f32 kernel's bits on lengths
//!   around the chunk and the parallel grain.
//!
//! Runs in well under a second.
use cola_kernels::cpu::adamw::{adamw_step, adamw_step_bf16, adamw_step_mixed, AdamWStep, MixedState};
use cola_kernels::cpu::bf16::{map_chunks_par, map_in_place, round, round_one, widen, widen_one, CHUNK};
use cola_kernels::cpu::simd::{self, Level};
use cola_kernels::float::PARALLEL_MIN_ELEMS;
use half::bf16;

use crate::common;

use common::Rng;

/// Uniform in `[-scale, scale)` as f32, from the shared generator.
fn uniform(rng: &mut Rng, scale: f32) -> f32 {
    (rng.uniform() * f64::from(scale)) as f32
}

fn bits(x: &[bf16]) -> Vec<u16> {
    x.iter().map(|b| b.to_bits()).collect()
}

fn levels() -> Vec<Level> {
    Level::ALL.into_iter().filter(|l| l.is_supported()).collect()
}

fn edge_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x0000_8000),
        f32::from_bits(0x3f80_8000), // tie, even below: rounds down
        f32::from_bits(0x3f81_8000), // tie, odd below: rounds up
        f32::from_bits(0x3f80_8001),
        f32::from_bits(0x3f80_7fff),
        f32::MAX,
        f32::MIN,
        f32::from_bits(0x7f7f_7fff),
        f32::from_bits(0x7f7f_8000), // rounds to +inf
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN, payload only in the low half
        f32::from_bits(0xff81_2345),
        f32::from_bits(0x7fff_ffff),
    ];
    let mut rng = Rng(7);
    v.extend((0..4096).map(|_| f32::from_bits(rng.next_u64() as u32)));
    v
}

#[test]
fn rounding_is_half_from_f32_and_widening_is_exact_on_every_level() {
    let _level = common::level_lock();
    let xs = edge_f32();
    let want: Vec<u16> = xs.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    let scalar: Vec<u16> = xs.iter().map(|&x| round_one(x).to_bits()).collect();
    assert_eq!(scalar, want);
    for level in levels() {
        simd::set_max_level(Some(level));
        let mut out = vec![bf16::ZERO; xs.len()];
        round(&xs, &mut out);
        assert_eq!(bits(&out), want, "{level:?}");
        let mut back = vec![0.0f32; xs.len()];
        widen(&out, &mut back);
        let want_back: Vec<u32> = out.iter().map(|b| b.to_f32().to_bits()).collect();
        assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want_back, "{level:?}");
        assert!(out.iter().zip(&back).all(|(b, w)| widen_one(*b).to_bits() == w.to_bits()));
    }
    simd::set_max_level(None);
}

/// Gradients, moments and weights with the cases that stress the update: zeros, second moments far
/// below `eps^2` (the denominator is then `eps`), gradients of 1e3 (steps of about `lr`), subnormals.
fn adamw_inputs(n: usize, seed: u64) -> [Vec<f32>; 4] {
    let mut rng = Rng(seed);
    let mut p: Vec<f32> = (0..n).map(|_| uniform(&mut rng, 2.0)).collect();
    let mut g: Vec<f32> = (0..n).map(|_| uniform(&mut rng, 1.0)).collect();
    let mut m: Vec<f32> = (0..n).map(|_| uniform(&mut rng, 0.1)).collect();
    let mut v: Vec<f32> = (0..n).map(|_| uniform(&mut rng, 0.01).abs()).collect();
    for i in 0..n {
        match i % 7 {
            0 => (p[i], g[i], m[i], v[i]) = (0.0, 0.0, 0.0, 0.0),
            1 => v[i] = 1e-30,
            2 => g[i] *= 1e3,
            3 => (g[i], m[i]) = (1e-40, 0.0),
            4 => (p[i], v[i]) = (-0.0, 0.0),
            _ => {}
        }
    }
    [p, g, m, v].map(|x| x.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect())
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn hyper(step: u64, lr: f64) -> AdamWStep {
    AdamWStep { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step }
}

#[test]
fn pure_bf16_adamw_is_the_f32_step_rounded() {
    for (n, seed) in [(1, 1), (CHUNK + 3, 2), (PARALLEL_MIN_ELEMS + CHUNK + 5, 3)] {
        for h in [hyper(1, 1e-3), hyper(7, 0.5), hyper(1000, 6e-3)] {
            let [p, g, m, v] = adamw_inputs(n, seed);
            let (mut wp, mut wm, mut wv) = (p.clone(), m.clone(), v.clone());
            adamw_step(&mut wp, &g, &mut wm, &mut wv, h);
            let (mut bp, bg, mut bm, mut bv) = (to_bf16(&p), to_bf16(&g), to_bf16(&m), to_bf16(&v));
            adamw_step_bf16(&mut bp, &bg, &mut bm, &mut bv, h);
            assert_eq!(bits(&bp), bits(&to_bf16(&wp)), "param, n {n}, {h:?}");
            assert_eq!(bits(&bm), bits(&to_bf16(&wm)), "m, n {n}, {h:?}");
            assert_eq!(bits(&bv), bits(&to_bf16(&wv)), "v, n {n}, {h:?}");
            // The step changed weights (element 0 alone is all zeros and stays), so the equalities above
            // are not between two untouched copies.
            if n > 1 {
                assert_ne!(bits(&bp), bits(&to_bf16(&p)));
            }
        }
    }
}

#[test]
fn mixed_adamw_is_the_f32_step_on_the_master_then_rounded() {
    for (n, seed) in [(5, 4), (2 * CHUNK - 1, 5), (PARALLEL_MIN_ELEMS * 2 + 9, 6)] {
        let h = hyper(3, 6e-3);
        let [mut master, g, m, v] = adamw_inputs(n, seed);
        // A master with bits below bf16's precision, as a master drifts from its param.
        master.iter_mut().enumerate().for_each(|(i, w)| *w += (i % 5) as f32 * 1e-5);
        let (mut wmaster, mut wm, mut wv) = (master.clone(), m.clone(), v.clone());
        adamw_step(&mut wmaster, &g, &mut wm, &mut wv, h);
        let (mut master2, mut m2, mut v2) = (master.clone(), m.clone(), v.clone());
        let mut param = to_bf16(&master);
        let state = MixedState { master: &mut master2, m: &mut m2, v: &mut v2, param: &mut param };
        adamw_step_mixed(state, &to_bf16(&g), h);
        let f32_bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(f32_bits(&master2), f32_bits(&wmaster), "master, n {n}");
        assert_eq!(f32_bits(&m2), f32_bits(&wm), "m, n {n}");
        assert_eq!(f32_bits(&v2), f32_bits(&wv), "v, n {n}");
        assert_eq!(bits(&param), bits(&to_bf16(&wmaster)), "param, n {n}");
    }
}

#[test]
fn chunked_map_gives_the_upcast_bits() {
    let mut rng = Rng(11);
    for n in [0, 1, CHUNK - 1, CHUNK + 1, PARALLEL_MIN_ELEMS + 3 * CHUNK + 7] {
        let a: Vec<bf16> = (0..n).map(|_| bf16::from_f32(uniform(&mut rng, 3.0))).collect();
        let b: Vec<bf16> = (0..n).map(|_| bf16::from_f32(uniform(&mut rng, 3.0))).collect();
        let f = |x: f32, y: f32| x * y + x / 3.0;
        let want: Vec<u16> =
            a.iter().zip(&b).map(|(x, y)| bf16::from_f32(f(x.to_f32(), y.to_f32())).to_bits()).collect();
        let mut out = vec![bf16::ZERO; n];
        let mut out2 = vec![bf16::ZERO; n];
        map_chunks_par([&a, &b], [&mut out, &mut out2], |[x, y], [o, o2]| {
            o.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (&x, &y))| *o = f(x, y));
            o2.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (&x, &y))| *o = f(y, x));
        });
        assert_eq!(bits(&out), want, "n {n}");
        let want2: Vec<u16> =
            a.iter().zip(&b).map(|(x, y)| bf16::from_f32(f(y.to_f32(), x.to_f32())).to_bits()).collect();
        assert_eq!(bits(&out2), want2, "second output, n {n}");
        let mut in_place = a.clone();
        map_in_place(&mut in_place, |w| w.iter_mut().for_each(|x| *x = f(*x, 0.5)));
        let want3: Vec<u16> = a.iter().map(|x| bf16::from_f32(f(x.to_f32(), 0.5)).to_bits()).collect();
        assert_eq!(bits(&in_place), want3, "in place, n {n}");
    }
}
