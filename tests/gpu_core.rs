//! The GPU core against the CPU: transfers, strided copies and casts, fills, and cuBLAS matmul over every
//! transpose and batch-broadcast case; plus the errors of asking for a GPU that is not there.
//! Needs a CUDA device; without one each GPU test prints `skipped: no CUDA device`.
#![cfg(feature = "cuda")]
use cola::tensor::cuda::cuda_device_count;
use cola::{DType, Device, Rng, Tensor};

mod common;
use common::gpu::{have_gpu, GPU};

/// max |a - b| / max(1, max |b|) over the elements.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    g.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, &mut Rng::new(seed))
}

#[test]
fn asking_for_a_missing_gpu_is_an_error_value() {
    let ordinal = cuda_device_count() + 3;
    let err = randn(&[2, 2], 1).to_device(Device::Cuda(ordinal)).expect_err("no such device");
    let text = err.to_string();
    assert!(text.contains(&format!("cuda:{ordinal}")), "{text}");
    assert!(Tensor::zeros_on(&[2], DType::F32, Device::Cuda(ordinal)).is_err());
}

#[test]
fn round_trip_copies_casts_and_fills() {
    if !have_gpu() {
        return;
    }
    for n in [1usize, 7, 1000, 65537] {
        let x = randn(&[n], n as u64);
        let g = x.to_device(GPU).unwrap();
        assert_eq!(g.device(), GPU);
        assert_eq!(g.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap(), "f32 round trip of {n}");
        let b = g.to_dtype(DType::BF16).unwrap();
        let want = x.to_dtype(DType::BF16).unwrap();
        assert_eq!(b.to_vec_f64(), want.to_vec_f64(), "bf16 rounding on the GPU equals the CPU's ({n})");
        assert_eq!(b.to_dtype(DType::F32).unwrap().to_vec_f64(), want.to_vec_f64());
    }
    let x = randn(&[5, 6, 7], 3);
    let g = x.to_device(GPU).unwrap();
    for (perm, name) in [([2, 0, 1], "permute"), ([1, 2, 0], "permute2")] {
        let want = x.permute(&perm).unwrap().contiguous().unwrap();
        let got = g.permute(&perm).unwrap().contiguous().unwrap();
        assert_eq!(rel_err(&got, &want), 0.0, "{name}");
    }
    // Head-major permutes of attention-shaped tensors take the 16-byte copy path: still exact.
    for dtype in [DType::F32, DType::BF16] {
        let x = randn(&[4, 16, 8, 64], 9).to_dtype(dtype).unwrap();
        let want = x.permute(&[0, 2, 1, 3]).unwrap().contiguous().unwrap();
        let got = x.to_device(GPU).unwrap().permute(&[0, 2, 1, 3]).unwrap().contiguous().unwrap();
        assert_eq!(rel_err(&got, &want), 0.0, "{dtype} head-major permute");
    }
    let narrowed = g.narrow(1, 2, 3).unwrap().contiguous().unwrap();
    assert_eq!(rel_err(&narrowed, &x.narrow(1, 2, 3).unwrap().contiguous().unwrap()), 0.0);
    let full = Tensor::full_on(&[3, 33], 2.5, DType::BF16, GPU).unwrap();
    assert!(full.to_vec_f64().iter().all(|&v| v == 2.5));
    let zeros = Tensor::zeros_on(&[1025], DType::F32, GPU).unwrap();
    assert!(zeros.to_vec_f64().iter().all(|&v| v == 0.0));
    assert!(randn(&[2], 1).to_dtype(DType::F64).unwrap().to_device(GPU).is_err(), "f64 stays on the CPU");
}

#[test]
fn matmul_matches_the_cpu_for_every_layout() {
    if !have_gpu() {
        return;
    }
    // (a shape, b shape, transpose a's last dims, transpose b's last dims)
    // The last three are large with rows that are not 16-byte aligned: operands are copied into padded
    // buffers and the output is a view of one.
    let cases: [(&[usize], &[usize], bool, bool); 12] = [
        (&[7, 5], &[5, 3], false, false),
        (&[64, 96], &[96, 33], false, false),
        (&[5, 7], &[5, 3], true, false),
        (&[7, 5], &[3, 5], false, true),
        (&[5, 7], &[3, 5], true, true),
        (&[4, 9, 16], &[16, 8], false, false),
        (&[4, 9, 16], &[4, 8, 16], false, true),
        (&[2, 3, 9, 16], &[3, 16, 5], false, false),
        (&[1, 1], &[1, 1], false, false),
        (&[300, 257], &[257, 301], false, false),
        (&[257, 300], &[301, 257], true, true),
        (&[2, 150, 257], &[257, 301], false, false),
    ];
    for (i, (sa, sb, ta, tb)) in cases.iter().enumerate() {
        let mut a = randn(sa, 10 + i as u64);
        let mut b = randn(sb, 20 + i as u64);
        if *ta {
            a = a.transpose(-1, -2).unwrap();
        }
        if *tb {
            b = b.transpose(-1, -2).unwrap();
        }
        let want = a.matmul(&b).unwrap();
        let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
        let (ga, gb) = (
            if *ta {
                ga.transpose(-1, -2).unwrap().contiguous().unwrap().transpose(-1, -2).unwrap()
            } else {
                ga
            },
            if *tb {
                gb.transpose(-1, -2).unwrap().contiguous().unwrap().transpose(-1, -2).unwrap()
            } else {
                gb
            },
        );
        let got = ga.matmul(&gb).unwrap();
        let err = rel_err(&got, &want);
        eprintln!("matmul case {i}: {sa:?} x {sb:?} (t {ta} {tb}): rel err {err:.2e}");
        assert!(err <= 1e-5, "matmul f32 case {i}: {err}");
        let got16 = ga.to_dtype(DType::BF16).unwrap().matmul(&gb.to_dtype(DType::BF16).unwrap()).unwrap();
        let err16 = rel_err(&got16, &want);
        assert!(err16 <= 2e-2, "matmul bf16 case {i}: {err16}");
    }
    // A batch whose rows do not continue from one entry to the next (narrowed) cannot be folded into one
    // product with the shared weight.
    let a = randn(&[4, 12, 16], 30).narrow(1, 0, 9).unwrap();
    let w = randn(&[16, 8], 31);
    let want = a.matmul(&w).unwrap();
    let got = randn(&[4, 12, 16], 30)
        .to_device(GPU)
        .unwrap()
        .narrow(1, 0, 9)
        .unwrap()
        .matmul(&w.to_device(GPU).unwrap())
        .unwrap();
    assert!(rel_err(&got, &want) <= 1e-5, "narrowed batch with a shared weight");
    // A broadcast view with no unit stride is copied before the GEMM.
    let a = randn(&[3, 4], 5);
    let b = randn(&[6, 4, 2], 6).narrow(0, 1, 4).unwrap().permute(&[0, 1, 2]).unwrap();
    let want = a.broadcast_to(&[4, 3, 4]).unwrap().matmul(&b).unwrap();
    let got = a
        .to_device(GPU)
        .unwrap()
        .broadcast_to(&[4, 3, 4])
        .unwrap()
        .matmul(&b.to_device(GPU).unwrap())
        .unwrap();
    assert!(rel_err(&got, &want) <= 1e-5);
}
