//! The LM head and the cross-entropy fused in blocks of rows: the mean next-token loss of hidden states
//! `[..., d]` under a head `weight: [d, vocab]`, without ever holding the `[rows, vocab]` logits of all
//! rows at once.
//!
//! Unfused, the logits are a saved activation: cross-entropy's backward reads them, so a model keeps
//! `vocab` values per token until its backward (at vocab 32000, 128 KB per token in f32, a quarter of
//! what CoLA-M keeps per token at 350m). Here each block of [`HEAD_LOSS_CHUNK_ROWS`] rows forms its logits
//! with [`Tensor::matmul`], reduces them with the cross-entropy kernels and drops them. Because the loss is
//! the last op of a step, its gradients can also be formed in the same pass, while each block's logits
//! exist anyway ([`Tensor::head_cross_entropy_with_grads`]): training then never forms the logits a second
//! time. [`Tensor::head_cross_entropy_backward`] is the other way, forming them again block by block from
//! the two inputs. The pieces are the existing matmul and cross-entropy ops, so the fused op runs on every
//! device they run on. bf16 operands on the CPU keep the logits and the gradient sums in f32 (the bf16
//! GEMM's accumulator, `matmul::matmul_bf16_f32`) and round only the logits' gradient, which the two
//! gradient products read as a bf16 operand (tests: `tensor/tests/suite/bf16_head.rs`).
//!
//! The sums follow a fixed order (blocks in row order, rows in order inside a block, in f64), so results do
//! not depend on timing; with a single block they are bit-identical to `matmul` then `cross_entropy`.
use super::check_same;
use crate::error::{Result, TensorError};
use crate::Tensor;
use cola_kernels::cpu::loss::counted_targets;

/// Rows per block. A block's logits and their gradient are `rows * vocab` values each: 1024 rows at vocab
/// 32000 are 131 MB each in f32, a bounded transient instead of a saved activation that grows with the
/// batch. Smaller blocks cost time in the gradient pass, where the weight gradient `hidden^T @ d logits` of a block
/// has only the block's rows as its inner dimension and is added into the accumulated gradient once per
/// block: measured on 2040 rows, d 512, vocab 32000, f32, 2 threads, backward took 3.2 s in blocks of
/// 256 rows, 2.3 s of 512, 1.9 s of 1024 and 1.7 s in one block (forward 0.5 to 0.7 s for all).
pub const HEAD_LOSS_CHUNK_ROWS: usize = 1024;

/// Validates the operands; returns the hidden states as rows `[rows, d]` and `vocab`.
fn check(
    op: &'static str,
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    ignore_id: Option<u32>,
    chunk_rows: usize,
) -> Result<(Tensor, usize)> {
    check_same(op, &[hidden, weight])?;
    let invalid = |reason: String| Err(TensorError::InvalidArgument { op, reason });
    if chunk_rows == 0 {
        return invalid("blocks of 0 rows".into());
    }
    let (&[d, vocab], Some(&hidden_d)) = (weight.shape(), hidden.shape().last()) else {
        return invalid(format!(
            "hidden {:?} must be [..., d] and weight {:?} must be [d, vocab]",
            hidden.shape(),
            weight.shape()
        ));
    };
    if hidden_d != d || vocab == 0 {
        return invalid(format!(
            "hidden {:?} and weight {:?} do not form [..., d] @ [d, vocab] with vocab > 0",
            hidden.shape(),
            weight.shape()
        ));
    }
    let rows = hidden.numel().checked_div(d).unwrap_or(0);
    if targets.len() != rows {
        return invalid(format!(
            "{} targets for hidden of shape {:?} ({rows} rows)",
            targets.len(),
            hidden.shape()
        ));
    }
    if let Some(&bad) = targets.iter().find(|&&t| Some(t) != ignore_id && t as usize >= vocab) {
        return Err(TensorError::IndexOutOfRange { op, index: bad as usize, size: vocab });
    }
    Ok((hidden.reshape(&[rows, d])?, vocab))
}

/// `(start, len)` of consecutive blocks of at most `chunk_rows` rows covering `0..rows`.
fn blocks(rows: usize, chunk_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rows).step_by(chunk_rows).map(move |start| (start, chunk_rows.min(rows - start)))
}

/// Which gradients a pass over the blocks forms, scaled by `grad_loss`.
#[derive(Clone, Copy)]
struct GradientRequest {
    grad_loss: f64,
    hidden: bool,
    weight: bool,
}

/// What a pass over the blocks formed: the loss summed over counted rows (f64, 0 when not asked for) and
/// the requested gradients in the compute dtype, `[rows, d]` and `[d, vocab]`.
struct BlockPass {
    loss_sum: f64,
    grad_rows: Option<Tensor>,
    grad_weight: Option<Tensor>,
}

/// The one loop over blocks of `chunk_rows` rows of `rows: [rows, d]` that every entry point runs. Per
/// block the logits are formed once; with `loss` their cross-entropy sum is added (in block order, in
/// f64); with a gradient request, `d logits = (softmax - onehot) * grad_loss / count` by the
/// cross-entropy backward (asked for the block's mean, so its loss gradient is scaled by
/// `block count / count`), then `d hidden = d logits @ weight^T` and `d weight += hidden^T @ d logits`,
/// accumulated in the compute dtype in block order (the first block's product is the sum so far: no pass
/// over zeros). Blocks with no counted target add no loss, have zero gradient and skip the products.
fn block_pass(
    rows: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    ignore_id: Option<u32>,
    chunk_rows: usize,
    loss: bool,
    grads: Option<GradientRequest>,
) -> Result<BlockPass> {
    let (device, compute) = (rows.device(), rows.dtype().compute_dtype());
    let d = weight.shape()[0];
    let count = counted_targets(targets, ignore_id);
    let want_rows = grads.is_some_and(|g| g.hidden);
    let weight_t = weight.t()?;
    // bf16 operands on the CPU keep the logits and both gradients' sums in f32, straight from the bf16
    // GEMM's f32 accumulator (`matmul_bf16_f32`): the logits are read by the loss in f32 anyway, and the
    // weight gradient is summed over blocks in the GEMM itself (beta = 1) instead of rounded per block,
    // widened and added. Only the logits' gradient, an operand of the two gradient products, is bf16.
    let bf16_cpu = rows.dtype() == crate::DType::BF16 && device == crate::Device::Cpu;
    let product = |a: &Tensor, b: &Tensor, acc: Option<Tensor>| -> Result<Tensor> {
        if bf16_cpu {
            return super::matmul::matmul_bf16_f32(a, b, acc);
        }
        let p = a.matmul(b)?.to_dtype(compute)?;
        match acc {
            None => Ok(p),
            Some(sum) => sum.add(&p),
        }
    };
    let mut pass = BlockPass { loss_sum: 0.0, grad_rows: None, grad_weight: None };
    let mut grad_rows = Vec::with_capacity(if want_rows { targets.len().div_ceil(chunk_rows) } else { 0 });
    for (start, len) in blocks(targets.len(), chunk_rows) {
        let block_targets = &targets[start..start + len];
        let block_count = counted_targets(block_targets, ignore_id);
        if block_count == 0 {
            if want_rows {
                grad_rows.push(Tensor::zeros_on(&[len, d], compute, device)?);
            }
            continue;
        }
        let block = rows.narrow(0, start, len)?;
        let logits = if bf16_cpu { product(&block, weight, None)? } else { block.matmul(weight)? };
        let block_grad_loss = grads.map(|request| request.grad_loss * block_count as f64 / count as f64);
        let (block_loss, grad_logits) =
            logits.cross_entropy_block(block_targets, ignore_id, loss, block_grad_loss, rows.dtype())?;
        drop(logits);
        pass.loss_sum += block_loss;
        let (Some(request), Some(grad_logits)) = (grads, grad_logits) else { continue };
        if request.hidden {
            grad_rows.push(product(&grad_logits, &weight_t, None)?);
        }
        if request.weight {
            pass.grad_weight = Some(product(&block.t()?, &grad_logits, pass.grad_weight.take())?);
        }
    }
    if want_rows {
        pass.grad_rows = Some(match grad_rows.len() {
            0 => Tensor::zeros_on(&[targets.len(), d], compute, device)?,
            1 => grad_rows.swap_remove(0),
            _ => Tensor::concat(&grad_rows, 0)?,
        });
    }
    if grads.is_some_and(|g| g.weight) && pass.grad_weight.is_none() {
        pass.grad_weight = Some(Tensor::zeros_on(weight.shape(), compute, device)?);
    }
    Ok(pass)
}

/// The mean loss of a pass as a scalar in the compute dtype (0 when every target is ignored).
fn mean_loss(hidden: &Tensor, loss_sum: f64, targets: &[u32], ignore_id: Option<u32>) -> Result<Tensor> {
    let count = counted_targets(targets, ignore_id);
    let loss = if count == 0 { 0.0 } else { loss_sum / count as f64 };
    Tensor::full_on(&[], loss, hidden.dtype().compute_dtype(), hidden.device())
}

/// The loss and the gradients of [`Tensor::head_cross_entropy_with_grads`].
#[derive(Clone, Debug)]
pub struct HeadLossWithGrads {
    /// The mean loss, a scalar in the compute dtype: bit-identical to [`Tensor::head_cross_entropy`].
    pub loss: Tensor,
    /// `d loss / d hidden` in the shape of hidden and the compute dtype, when asked for.
    pub grad_hidden: Option<Tensor>,
    /// `d loss / d weight`, `[d, vocab]` in the compute dtype, when asked for.
    pub grad_weight: Option<Tensor>,
}

impl Tensor {
    /// Mean over rows whose target is not `ignore_id` of `-log softmax(hidden[row] @ weight)[target]`:
    /// the value of `hidden.matmul(weight)?.cross_entropy(targets, ignore_id)` (within the rounding of the
    /// order of summation), a scalar in the compute dtype, computed in blocks of
    /// [`HEAD_LOSS_CHUNK_ROWS`] rows. 0 when every target is ignored.
    pub fn head_cross_entropy(
        &self,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
    ) -> Result<Tensor> {
        self.head_cross_entropy_chunked(weight, targets, ignore_id, HEAD_LOSS_CHUNK_ROWS)
    }

    /// [`Tensor::head_cross_entropy`] in blocks of `chunk_rows` rows (the block size is an argument so
    /// tests can cross block boundaries on small inputs).
    pub fn head_cross_entropy_chunked(
        &self,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        chunk_rows: usize,
    ) -> Result<Tensor> {
        let (rows, _) = check("head_cross_entropy", self, weight, targets, ignore_id, chunk_rows)?;
        let pass = block_pass(&rows, weight, targets, ignore_id, chunk_rows, true, None)?;
        mean_loss(self, pass.loss_sum, targets, ignore_id)
    }

    /// [`Tensor::head_cross_entropy`] and, from the same logits, its gradients for a loss gradient of 1:
    /// of the hidden states when `want_hidden`, of the weight when `want_weight`. The loss is
    /// bit-identical to [`Tensor::head_cross_entropy`] and the gradients to
    /// [`Tensor::head_cross_entropy_backward`] with `grad_loss` 1 (same kernels, same order), but the
    /// logits are formed once instead of twice.
    pub fn head_cross_entropy_with_grads(
        &self,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        want_hidden: bool,
        want_weight: bool,
    ) -> Result<HeadLossWithGrads> {
        self.head_cross_entropy_with_grads_chunked(
            weight,
            targets,
            ignore_id,
            want_hidden,
            want_weight,
            HEAD_LOSS_CHUNK_ROWS,
        )
    }

    /// [`Tensor::head_cross_entropy_with_grads`] in blocks of `chunk_rows` rows.
    pub fn head_cross_entropy_with_grads_chunked(
        &self,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        want_hidden: bool,
        want_weight: bool,
        chunk_rows: usize,
    ) -> Result<HeadLossWithGrads> {
        let op = "head_cross_entropy_with_grads";
        let (rows, _) = check(op, self, weight, targets, ignore_id, chunk_rows)?;
        let request = GradientRequest { grad_loss: 1.0, hidden: want_hidden, weight: want_weight };
        let pass = block_pass(&rows, weight, targets, ignore_id, chunk_rows, true, Some(request))?;
        Ok(HeadLossWithGrads {
            loss: mean_loss(self, pass.loss_sum, targets, ignore_id)?,
            grad_hidden: pass.grad_rows.map(|g| g.reshape(self.shape())).transpose()?,
            grad_weight: pass.grad_weight,
        })
    }

    /// Gradients `(d hidden, d weight)` of [`Tensor::head_cross_entropy`] scaled by the loss gradient
    /// `grad_loss`, in the dtypes and shapes of `hidden` and `weight`.
    pub fn head_cross_entropy_backward(
        hidden: &Tensor,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        grad_loss: f64,
    ) -> Result<(Tensor, Tensor)> {
        Tensor::head_cross_entropy_backward_chunked(
            hidden,
            weight,
            targets,
            ignore_id,
            grad_loss,
            HEAD_LOSS_CHUNK_ROWS,
        )
    }

    /// [`Tensor::head_cross_entropy_backward`] in blocks of `chunk_rows` rows: the logits are formed again
    /// from the two inputs (see `block_pass` for the per-block products).
    pub fn head_cross_entropy_backward_chunked(
        hidden: &Tensor,
        weight: &Tensor,
        targets: &[u32],
        ignore_id: Option<u32>,
        grad_loss: f64,
        chunk_rows: usize,
    ) -> Result<(Tensor, Tensor)> {
        let op = "head_cross_entropy_backward";
        let (rows, _) = check(op, hidden, weight, targets, ignore_id, chunk_rows)?;
        let request = GradientRequest { grad_loss, hidden: true, weight: true };
        let pass = block_pass(&rows, weight, targets, ignore_id, chunk_rows, false, Some(request))?;
        let missing =
            || TensorError::InvalidArgument { op, reason: "a requested gradient was not formed".into() };
        let grad_hidden =
            pass.grad_rows.ok_or_else(missing)?.reshape(hidden.shape())?.to_dtype(hidden.dtype())?;
        let grad_weight = pass.grad_weight.ok_or_else(missing)?.to_dtype(weight.dtype())?;
        Ok((grad_hidden, grad_weight))
    }
}
