//! A CPU matmul of two bf16 tensors runs the bf16 GEMM (bf16 operands, f32 accumulation, one rounding to
//! bf16 on store) and returns bf16, for plain, transposed, narrowed and broadcast-batched operands.
//!
//! - It equals the kernels crate's `gemm_bf16` on the same values bit for bit (it is that GEMM).
//! - Against the f32 matmul `r` of the same (bf16-valued) inputs widened to f32: our f32 accumulator `s`
//!   and `r` each differ from the exact sum by at most `k * 2^-24 * M` (`M = sum|a||b|`; every one of the
//!   k additions rounds once, relative error 2^-24 of a partial sum at most M), so they differ by at most
//!   `k * eps * M` with `eps = 2^-23` (f32's machine epsilon), whatever their summation orders; the output
//!   is `s` rounded once to bf16, relative error at most 2^-8 (bf16 keeps 8 significant bits). Hence
//!   `|out - r| <= 2^-8 |s| + k eps M <= 2^-8 |r| + (1 + 2^-8) k eps M`, the bound checked.
//! - f32 and f64 matmuls keep their dtype and their GEMM (checked bit for bit against `gemm`).
//! - `ops::matmul::matmul_bf16_f32` (f32 output, for the LM head) is the bf16 GEMM without its final
//!   rounding, bit for bit (its test says why exact equality holds).
//!
//! Well under a second.
use cola_kernels::cpu::gemm::{gemm, gemm_bf16, Dims, MatRef};
use cola_tensor::ops::matmul::matmul_bf16_f32;
use cola_tensor::{bf16, DType, Rng, Tensor};

/// Deterministic values in [-2, 2), rounded to bf16 by the tensor constructor's caller.
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn bf16_tensor(shape: &[usize], seed: u64) -> Tensor {
    let data: Vec<bf16> = values(shape.iter().product(), seed).into_iter().map(bf16::from_f32).collect();
    Tensor::from_vec(data, shape).unwrap()
}

/// Checks `a @ b` (bf16) against the f32 matmul of the widened inputs within the header's bound.
fn check_against_f32(a: &Tensor, b: &Tensor) {
    let out = a.matmul(b).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let (wa, wb) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    let reference = wa.matmul(&wb).unwrap();
    assert_eq!(out.shape(), reference.shape());
    let abs = |t: &Tensor| {
        let data: Vec<f32> = t.to_vec::<f32>().unwrap().iter().map(|x| x.abs()).collect();
        Tensor::from_vec(data, t.shape()).unwrap()
    };
    let magnitude = abs(&wa).matmul(&abs(&wb)).unwrap().to_vec::<f32>().unwrap();
    let k = a.shape()[a.rank() - 1] as f64;
    let eps = 2f64.powi(-23);
    let got = out.to_vec::<bf16>().unwrap();
    for (i, ((&y, &r), &m)) in got.iter().zip(&reference.to_vec::<f32>().unwrap()).zip(&magnitude).enumerate()
    {
        let (y, r, m) = (f64::from(y.to_f32()), f64::from(r), f64::from(m));
        let bound = 2f64.powi(-8) * r.abs() + (1.0 + 2f64.powi(-8)) * k * eps * m;
        assert!(
            (y - r).abs() <= bound,
            "{:?} @ {:?}: [{i}] = {y}, f32 gives {r} (bound {bound})",
            a.shape(),
            b.shape()
        );
    }
}

#[test]
fn bf16_matmul_is_within_one_rounding_of_the_f32_matmul() {
    let x = bf16_tensor(&[37, 530], 1);
    let w = bf16_tensor(&[530, 45], 2);
    check_against_f32(&x, &w);
    // Transposed and narrowed operands (strided views), and broadcast batch dims.
    let wt = bf16_tensor(&[45, 530], 3);
    check_against_f32(&x, &wt.t().unwrap());
    check_against_f32(&x.narrow(1, 7, 300).unwrap(), &w.narrow(0, 100, 300).unwrap());
    let batched = bf16_tensor(&[3, 2, 9, 64], 4);
    check_against_f32(&batched, &bf16_tensor(&[64, 33], 5));
    check_against_f32(&batched, &bf16_tensor(&[2, 64, 17], 6));
    check_against_f32(&bf16_tensor(&[1, 5, 1000], 7), &bf16_tensor(&[4, 1000, 3], 8));
}

#[test]
fn bf16_matmul_is_the_bf16_gemm() {
    let (m, k, n) = (29, 301, 70);
    let (a, b) = (bf16_tensor(&[m, k], 9), bf16_tensor(&[k, n], 10));
    let got: Vec<u16> = a.matmul(&b).unwrap().to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits()).collect();
    let (a_data, b_data) = (a.to_vec::<bf16>().unwrap(), b.to_vec::<bf16>().unwrap());
    let mut c = vec![bf16::ZERO; m * n];
    let view = |data, cols| MatRef { data, offset: 0, row_stride: cols, col_stride: 1 };
    gemm_bf16(Dims { m, n, k }, 1.0, view(&a_data, k), view(&b_data, n), 0.0, &mut c);
    assert_eq!(got, c.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
}

#[test]
fn f32_and_f64_matmuls_keep_their_gemm() {
    let (m, k, n) = (13, 77, 40);
    let a: Vec<f32> = values(m * k, 11);
    let b: Vec<f32> = values(k * n, 12);
    let out = Tensor::from_vec(a.clone(), &[m, k])
        .unwrap()
        .matmul(&Tensor::from_vec(b.clone(), &[k, n]).unwrap())
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let mut c = vec![0.0f32; m * n];
    let view = |data, cols| MatRef { data, offset: 0, row_stride: cols, col_stride: 1 };
    gemm(Dims { m, n, k }, 1.0, view(&a, k), view(&b, n), 0.0, &mut c);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out.to_vec::<f32>().unwrap()), bits(&c));

    let (a64, b64): (Vec<f64>, Vec<f64>) =
        (a.iter().map(|&x| x.into()).collect(), b.iter().map(|&x| x.into()).collect());
    let out = Tensor::from_vec(a64.clone(), &[m, k])
        .unwrap()
        .matmul(&Tensor::from_vec(b64.clone(), &[k, n]).unwrap())
        .unwrap();
    assert_eq!(out.dtype(), DType::F64);
    let mut c = vec![0.0f64; m * n];
    let view = |data, cols| MatRef { data, offset: 0, row_stride: cols, col_stride: 1 };
    gemm(Dims { m, n, k }, 1.0, view(&a64, k), view(&b64, n), 0.0, &mut c);
    assert_eq!(out.to_vec::<f64>().unwrap(), c);
}

/// `matmul_bf16_f32` is the bf16 GEMM without its final rounding: rounding its result gives
/// `matmul`'s bits exactly (same products in the same order), on a transposed operand too, over two
/// GEMM depth blocks; with an accumulator and a depth within one depth block on every path (KC is 512
/// on the dot paths, 256 on the widening ones that CPUs without bf16 dot products run) the sum
/// `acc + a @ b` is rounded once, so it equals the f32 addition of the product to `acc` bit for bit.
/// (Over several blocks each block's sum is added to C in turn, which the f32 addition does not
/// reproduce.)
#[test]
fn f32_output_is_the_unrounded_bf16_product() {
    let mut rng = Rng::new(5);
    let (m, k, n) = (37, 300, 70);
    let a = Tensor::randn(&[m, k], 0.0, 1.0, DType::BF16, &mut rng);
    let b = Tensor::randn(&[n, k], 0.0, 1.0, DType::BF16, &mut rng).t().unwrap();
    let wide = matmul_bf16_f32(&a, &b, None).unwrap();
    assert_eq!(wide.dtype(), DType::F32);
    let rounded: Vec<u16> =
        wide.to_vec::<f32>().unwrap().iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    let direct: Vec<u16> =
        a.matmul(&b).unwrap().to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits()).collect();
    assert_eq!(rounded, direct);

    let k = 200;
    let a = Tensor::randn(&[m, k], 0.0, 1.0, DType::BF16, &mut rng);
    let b = Tensor::randn(&[n, k], 0.0, 1.0, DType::BF16, &mut rng).t().unwrap();
    let wide = matmul_bf16_f32(&a, &b, None).unwrap();
    let acc = Tensor::randn(&[m, n], 0.0, 1.0, DType::F32, &mut rng);
    let want: Vec<u32> =
        acc.add(&wide).unwrap().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
    let got = matmul_bf16_f32(&a, &b, Some(acc)).unwrap();
    let got: Vec<u32> = got.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
    assert_eq!(got, want);
    let bad = Tensor::zeros(&[m, n + 1], DType::F32);
    assert!(matmul_bf16_f32(&a, &b, Some(bad)).is_err());
}
