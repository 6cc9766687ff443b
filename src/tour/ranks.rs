//! Stop 15: two data-parallel ranks, each with half of a batch, sum their gradients through the
//! collective interface of `src/dist/mod.rs` and hold the gradient of the whole batch.
use super::check::max_abs_diff;
use super::update::batch_ids;
use super::{Result, TourError};
use crate::autograd::{GradStore, Graph, Tape};
use crate::dist::{all_reduce_gradients, shard_rows, Collective, DEFAULT_BUCKET_BYTES};
use crate::nn::{Llama, LlamaConfig};
use crate::tensor::Rng;
use std::fmt::Write as _;
use std::sync::{Barrier, Mutex};

/// A world of threads in one process: each sum adds every rank's buffer into a shared one, in rank
/// order, between barriers (the sum MPI or NCCL would compute, without the transport). As with MPI, every
/// rank must make the same calls: a rank that stops early leaves the others waiting.
#[derive(Debug)]
struct Threads {
    ranks: usize,
    arrived: Barrier,
    /// One slot per rank: its buffer, posted for the others to read.
    posted: Mutex<Vec<Vec<f64>>>,
}

/// One rank of a [`Threads`] world.
#[derive(Debug)]
struct ThreadRank<'w> {
    rank: usize,
    world: &'w Threads,
}

impl ThreadRank<'_> {
    /// Posts `values`, waits for every rank, and returns their sum in rank order (the same on every rank).
    fn sum(&self, values: Vec<f64>) -> Vec<f64> {
        self.world.posted.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = values;
        self.world.arrived.wait();
        let posted = self.world.posted.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = vec![0.0; posted[0].len()];
        for buffer in posted.iter() {
            total.iter_mut().zip(buffer).for_each(|(t, v)| *t += v);
        }
        drop(posted);
        // Nobody posts the next buffer before every rank has read this one.
        self.world.arrived.wait();
        total
    }
}

impl Collective for ThreadRank<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world.ranks
    }

    fn all_reduce_sum(&self, buffer: &mut [f32]) -> crate::dist::Result<()> {
        // Two f32 values summed in f64 and rounded once: the f32 sum a two-rank ring computes.
        let total = self.sum(buffer.iter().map(|&v| f64::from(v)).collect());
        buffer.iter_mut().zip(total).for_each(|(b, t)| *b = t as f32);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> crate::dist::Result<()> {
        let total = self.sum(values.to_vec());
        values.copy_from_slice(&total);
        Ok(())
    }

    /// A sum in which every rank but `root` contributes zeros.
    fn broadcast(&self, buffer: &mut [u8], root: usize) -> crate::dist::Result<()> {
        let mine = if self.rank == root {
            buffer.iter().map(|&b| f64::from(b)).collect()
        } else {
            vec![0.0; buffer.len()]
        };
        let total = self.sum(mine);
        buffer.iter_mut().zip(total).for_each(|(b, t)| *b = t as u8);
        Ok(())
    }

    fn barrier(&self) -> crate::dist::Result<()> {
        self.world.arrived.wait();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The gradient of `rows` sequences of `ids` (row-major `[rows, seq]`), its loss weighted by `weight`.
fn gradient(model: &Llama, ids: &[u32], rows: usize, seq: usize, weight: f64) -> Result<GradStore> {
    let mut tape = Tape::new();
    let loss = model.loss(&mut tape, ids, rows, seq)?;
    let weighted = tape.mul_scalar(&loss, weight)?;
    let mut store = GradStore::new();
    store.accumulate(&tape.backward(weighted)?)?;
    Ok(store)
}

/// Rank r takes rows `shard_rows(2, r, 2)` of a batch of two sequences, weights its loss by its share of
/// the targets, and sums gradients with the other rank through `all_reduce_gradients`: both ranks then
/// hold the same gradient, the one a single process computes on the whole batch.
pub fn ranks(out: &mut String) -> Result<()> {
    let config = LlamaConfig::preset("cola-tiny")?;
    let model = Llama::new(config.clone(), &mut Rng::new(3))?;
    let seq = config.max_seq_len;
    let ids = batch_ids(&config);
    let single = gradient(&model, &ids, 2, seq, 1.0)?;
    let world = Threads { ranks: 2, arrived: Barrier::new(2), posted: Mutex::new(vec![Vec::new(); 2]) };
    let params = model.parameters();
    let results: Vec<Result<(std::ops::Range<usize>, usize, GradStore)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (world, model, ids, params) = (&world, &model, &ids, &params);
                scope.spawn(move || -> Result<_> {
                    let rows = shard_rows(2, rank, 2);
                    let mine = &ids[rows.start * seq..rows.end * seq];
                    let mut store = gradient(model, mine, rows.len(), seq, 0.5)?;
                    let collective = ThreadRank { rank, world };
                    let bytes = all_reduce_gradients(&collective, params, &mut store, DEFAULT_BUCKET_BYTES)?;
                    Ok((rows, bytes, store))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(TourError::RankPanicked))).collect()
    });
    let results: Vec<_> = results.into_iter().collect::<Result<_>>()?;
    let flat = |store: &GradStore| -> Vec<f64> {
        params.iter().flat_map(|p| store.get(p.id()).map(|g| g.to_vec_f64()).unwrap_or_default()).collect()
    };
    let reference = flat(&single);
    for (rank, (rows, bytes, _)) in results.iter().enumerate() {
        writeln!(out, "rank {rank}: rows {rows:?} of the batch, loss x 15/30; all-reduce of {bytes} bytes of f32 gradient")?;
    }
    let (g0, g1) = (flat(&results[0].2), flat(&results[1].2));
    writeln!(out, "after the sum both ranks hold the same gradient, bit for bit: {}", g0 == g1)?;
    writeln!(
        out,
        "against one process on both rows: {} values, largest difference below 1e-6: {}",
        reference.len(),
        g0.len() == reference.len() && max_abs_diff(&g0, &reference) < 1e-6
    )?;
    Ok(())
}
