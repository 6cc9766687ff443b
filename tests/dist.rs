//! Data-parallel training over MPI, end to end: the training program under `mpirun --oversubscribe -np 2`
//! against the same program in one process, on cola-tiny with a 300-entry BPE of a small corpus (16
//! tokens per sequence, one compute thread per process, so that only the split of the batch differs).
//!
//! What it proves:
//! - 2 ranks x 1 sequence compute the 1-process update with micro-batches of 1 BIT FOR BIT: each rank's
//!   gradient is the one-row micro-batch gradient of the single process, weighted by the same
//!   `count / global count`, and a sum of two f32 values is the same in either order. The final
//!   `model.safetensors` and every logged loss are identical.
//! - 2 ranks x 2 micro-batches match 1 process within 1e-6 relative on the losses: the 4 micro-batch
//!   gradients are summed as (g0 + g1) + (g2 + g3) instead of ((g0 + g1) + g2) + g3, which changes
//!   only the last f32 bit of a sum (2^-24 = 6e-8 relative per addition); over 3 updates that stays far
//!   below 1e-6 on the loss, while a wrong weight or a missed shard moves it by more than 1e-3.
//! - a 2-rank checkpoint resumed in 1 process continues the 1-process trajectory bit for bit.
//! - ZeRO-1 (`--zero 1`) over 2 ranks equals the plain 2-rank run BIT FOR BIT (losses, final weights and
//!   the checkpoint's optimizer file): the reduce-scatter sums the same two f32 values per element as
//!   the all-reduce, and AdamW is elementwise, so a rank's slice of the update is the slice of the whole
//!   update. The one sum whose terms are grouped differently is the squared gradient norm (shard
//!   partial sums, then across ranks, against per-parameter sums): it is f64, so it moves the norm by
//!   about 1e-16 relative, while the clip factor is rounded to f32 (6e-8), so the parameters keep their
//!   bits; the logged norm is compared within 1e-12. A ZeRO checkpoint (moments gathered) resumes in one
//!   process, and a 1-process checkpoint resumes under ZeRO (moments scattered), both continuing the
//!   uninterrupted trajectory bit for bit.
//! - a rank killed mid-run makes the launch exit non-zero within seconds, and the last checkpoint stays
//!   valid (`--eval-only` loads it).
//! - evaluation shared among 2 ranks (each runs every other forward pass of 3 sequences, the passes of
//!   one process) gives the 1-process validation loss within 1e-12 relative, with the same sequence and
//!   target counts: each pass's f32 mean is the same bits, and only the order of the f64 sum of a few
//!   dozen terms changes (below 1e-14 relative), while a pass lost or counted twice moves the loss by
//!   percents.
//! - gradient sums that overlap backward equal those after backward bit for bit (`dist/overlap.rs`).
//! - SIGUSR1 sent to rank 1 alone stops both ranks at the same step: rank 0 learns of it only through
//!   the stop flags reduced at the step boundary, saves the checkpoint of that step and names the signal,
//!   and the launch ends with status 75 instead of hanging (a rank that went on would wait forever in the
//!   next update's all-reduce). Time-based checkpoints (`--save-every-minutes`) are agreed the same way.
#![cfg(feature = "mpi")]
mod common;
/// Sums that overlap backward against sums after it.
#[path = "dist/overlap.rs"]
mod overlap;

use common::{training, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The training program built with `--features mpi`; built once if needed.
fn program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| training::build_training_program(&["mpi"]))
}

fn write_corpus(dir: &TempDir) {
    let sentences = [
        "the cat sat on the mat.",
        "a dog ran to the red house.",
        "birds sing in the tall green tree.",
        "we bake bread every morning.",
    ];
    let text: Vec<&str> = (0..400usize).map(|i| sentences[(i * 7 + i / 3) % 4]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
}

/// The flags of a tiny run into `dir/out` (no evaluation, a checkpoint at the end only).
fn flags(dir: &TempDir, out: &str, steps: u64, batch: usize, micro: usize) -> Vec<String> {
    let rest = [
        ("--steps", steps.to_string()),
        ("--batch-size", batch.to_string()),
        ("--micro-batch", micro.to_string()),
        ("--warmup", "2".into()),
        ("--lr", "1e-2".into()),
        ("--eval-every", "0".into()),
        ("--save-every", "0".into()),
    ];
    training::tiny_run_flags(dir, out, &rest)
}

/// Held by each test while its runs go: on a machine of 2 cores, the ranks of several launches at once
/// would poll for each other's messages and starve the ranks that compute.
fn one_launch_at_a_time() -> MutexGuard<'static, ()> {
    static LAUNCH: Mutex<()> = Mutex::new(());
    LAUNCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `mpirun` for `ranks` processes on this machine, allowed to run as root (CI containers), not pinned to
/// cores, and yielding the core while waiting for a message.
fn mpirun(ranks: usize) -> Command {
    let mut command = Command::new("mpirun");
    command.args(["--oversubscribe", "--bind-to", "none", "-np", &ranks.to_string()]);
    command.args(["--mca", "mpi_yield_when_idle", "1"]);
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        command.arg("--allow-run-as-root");
    }
    // Containers often forbid the cross-memory attach of shared-memory transfers.
    command.args(["--mca", "btl_vader_single_copy_mechanism", "none"]);
    command.arg(program());
    command
}

fn succeeded(output: Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn one_process(args: &[String]) {
    succeeded(Command::new(program()).args(args).output().unwrap(), "the 1-process run");
}

fn two_ranks(args: &[String]) {
    succeeded(mpirun(2).args(args).output().unwrap(), "the 2-rank run");
}

/// The train losses of `dir/out/metrics.jsonl`, in step order.
fn losses(dir: &TempDir, out: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|value| value.get("loss").and_then(serde_json::Value::as_f64))
        .collect()
}

fn weights(dir: &TempDir, out: &str) -> Vec<u8> {
    let checkpoint = cola::train::checkpoint::locate(&dir.join(out)).unwrap();
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn two_ranks_of_one_sequence_are_one_process_bit_for_bit() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-bits");
    write_corpus(&dir);
    one_process(&flags(&dir, "single", 4, 2, 1));
    two_ranks(&flags(&dir, "ranks", 4, 2, 1));
    let (single, ranks) = (losses(&dir, "single"), losses(&dir, "ranks"));
    assert_eq!(single.len(), 4);
    let bits = |v: &[f64]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&single), bits(&ranks), "losses: {single:?} vs {ranks:?}");
    assert!(weights(&dir, "single") == weights(&dir, "ranks"), "the final weights differ");
}

#[test]
fn two_ranks_of_two_micro_batches_match_one_process_within_1e_6() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-micro");
    write_corpus(&dir);
    one_process(&flags(&dir, "single", 3, 8, 2));
    two_ranks(&flags(&dir, "ranks", 3, 8, 2));
    let (single, ranks) = (losses(&dir, "single"), losses(&dir, "ranks"));
    assert_eq!((single.len(), ranks.len()), (3, 3));
    for (step, (a, b)) in single.iter().zip(&ranks).enumerate() {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "step {}: loss {a} vs {b}", step + 1);
    }
}

#[test]
fn a_two_rank_checkpoint_resumes_in_one_process_on_the_same_trajectory() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-resume");
    write_corpus(&dir);
    one_process(&flags(&dir, "whole", 6, 2, 1));
    let mut first = flags(&dir, "halves", 6, 2, 1);
    first.extend(["--stop-after".into(), "3".into()]);
    two_ranks(&first);
    let resume = ["--resume".to_string(), dir.join("halves").display().to_string()];
    one_process(&[&resume[..], &["--threads".to_string(), "1".to_string()]].concat());
    let (whole, halves) = (losses(&dir, "whole"), losses(&dir, "halves"));
    assert_eq!(halves.len(), 6);
    let bits = |v: &[f64]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&whole), bits(&halves), "losses: {whole:?} vs {halves:?}");
    assert!(weights(&dir, "whole") == weights(&dir, "halves"), "the final weights differ");
}

/// The gradient norms of `dir/out/metrics.jsonl`, in step order.
fn grad_norms(dir: &TempDir, out: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|value| value.get("grad_norm").and_then(serde_json::Value::as_f64))
        .collect()
}

fn optimizer_file(dir: &TempDir, out: &str) -> Vec<u8> {
    let checkpoint = cola::train::checkpoint::locate(&dir.join(out)).unwrap();
    std::fs::read(checkpoint.join(cola::train::OPTIMIZER_FILE)).unwrap()
}

/// 2 ranks x 1 sequence with micro-batches of 1, 4 updates (as the plain bit-for-bit test), with the
/// optimizer sharded; checkpoints of the sharded run resume in one process and the reverse.
#[test]
fn zero_one_over_two_ranks_is_the_plain_run_and_its_checkpoints_resume_either_way() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-zero");
    write_corpus(&dir);
    let zero = |mut flags: Vec<String>| {
        flags.extend(["--zero".into(), "1".into()]);
        flags
    };
    let stop_at_2 = |mut flags: Vec<String>| {
        flags.extend(["--stop-after".into(), "2".into()]);
        flags
    };
    let resume = |out: &str| vec!["--resume".to_string(), dir.join(out).display().to_string()];
    two_ranks(&flags(&dir, "plain", 4, 2, 1));
    let started = Instant::now();
    let output = mpirun(2).args(zero(flags(&dir, "zero", 4, 2, 1))).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    succeeded(output, "the 2-rank ZeRO run");
    eprintln!("the 2-rank ZeRO run took {:.1} s", started.elapsed().as_secs_f64());
    assert!(stderr.contains("ZeRO-1: the state of 1/2 of the parameters"), "start-up lines:\n{stderr}");
    // Sharded to one process: stop the ZeRO run at 2 and resume it alone.
    two_ranks(&stop_at_2(zero(flags(&dir, "to-one", 4, 2, 1))));
    one_process(&[resume("to-one"), vec!["--threads".into(), "1".into()]].concat());
    // One process to sharded: stop a 1-process run at 2 and resume it under ZeRO.
    one_process(&stop_at_2(flags(&dir, "to-zero", 4, 2, 1)));
    two_ranks(&zero([resume("to-zero"), vec!["--threads".into(), "1".into()]].concat()));

    let bits = |v: &[f64]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    let plain = losses(&dir, "plain");
    assert_eq!(plain.len(), 4);
    for out in ["zero", "to-one", "to-zero"] {
        let run = losses(&dir, out);
        assert_eq!(bits(&plain), bits(&run), "{out}: losses {plain:?} vs {run:?}");
        assert!(weights(&dir, "plain") == weights(&dir, out), "{out}: the final weights differ");
        assert!(optimizer_file(&dir, "plain") == optimizer_file(&dir, out), "{out}: the moments differ");
    }
    let (plain, zero) = (grad_norms(&dir, "plain"), grad_norms(&dir, "zero"));
    assert_eq!((plain.len(), zero.len()), (4, 4));
    for (a, b) in plain.iter().zip(&zero) {
        assert!((a - b).abs() <= 1e-12 * a, "gradient norm {a} vs {b}");
    }
}

/// The process ids whose parent is `parent` and whose environment holds `OMPI_COMM_WORLD_RANK=rank`.
fn rank_process(parent: u32, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (name) state ppid ...`: the name may hold spaces, so split after the closing parenthesis.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let has_rank = environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes());
        (ppid == parent && has_rank).then_some(pid)
    })
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_killed_rank_stops_the_run_within_seconds_and_the_last_checkpoint_stays_valid() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-kill");
    write_corpus(&dir);
    let mut args = flags(&dir, "run", 100_000, 2, 1);
    let save_every = args.iter().position(|flag| flag == "--save-every").unwrap() + 1;
    args[save_every] = "2".into();
    let mut launch = mpirun(2).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Older checkpoints are removed as newer ones are saved, so wait for any, not for checkpoint-2.
    let began = Instant::now();
    while cola::train::checkpoint::list(&dir.join("run")).is_empty() {
        assert!(began.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        assert!(launch.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = rank_process(launch.id(), 1).expect("rank 1 is a child of mpirun");
    let killed = Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    assert!(killed.success());
    let status = wait_with_limit(&mut launch, Duration::from_secs(20));
    if status.is_none() {
        let _ = launch.kill();
    }
    let status = status.expect("the other rank still runs 20 s after rank 1 was killed");
    assert!(!status.success(), "the launch reported success after a rank was killed");
    // The newest checkpoint is complete: --eval-only loads and evaluates it.
    let resume = ["--resume".to_string(), dir.join("run").display().to_string(), "--eval-only".into()];
    let output = Command::new(program()).args(&resume).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    succeeded(output, "--eval-only on the last checkpoint");
    assert!(stdout.contains("val loss"), "{stdout}");
}

#[test]
fn a_batch_that_does_not_divide_among_the_ranks_stops_every_rank_with_the_rank_named() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-divide");
    write_corpus(&dir);
    let output = mpirun(2).args(flags(&dir, "run", 2, 3, 1)).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("error on rank"), "{stderr}");
    assert!(stderr.contains("--batch-size 3 does not divide among 2 ranks"), "{stderr}");
}

#[test]
fn a_signal_to_one_rank_stops_both_at_the_same_step_with_a_checkpoint() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-signal");
    write_corpus(&dir);
    let mut args = flags(&dir, "run", 100_000, 2, 1);
    // 1e-6 minutes is shorter than any update: every step boundary after the first saves, as agreed.
    args.extend(["--save-every-minutes", "1e-6", "--keep-checkpoints", "all"].map(String::from));
    let stderr_path = dir.join("run.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut launch = mpirun(2).args(&args).stdout(Stdio::null()).stderr(Stdio::from(stderr)).spawn().unwrap();
    let began = Instant::now();
    while losses_so_far(&dir, "run") < 2 {
        assert!(began.elapsed() < Duration::from_secs(120), "no 2 updates after 2 minutes");
        assert!(launch.try_wait().unwrap().is_none(), "the run ended before it was signalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank1 = rank_process(launch.id(), 1).expect("rank 1 is a child of mpirun");
    let sent = Command::new("kill").args(["-USR1", &rank1.to_string()]).status().unwrap();
    assert!(sent.success());
    let status = wait_with_limit(&mut launch, Duration::from_secs(60));
    if status.is_none() {
        let _ = launch.kill();
    }
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let status = status.unwrap_or_else(|| panic!("the ranks did not stop within 60 s:\n{text}"));
    assert_eq!(status.code(), Some(75), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("stopped by SIGUSR1 at step "))
        .unwrap_or_else(|| panic!("{text}"));
    let step: u64 = line["stopped by SIGUSR1 at step ".len()..].split(':').next().unwrap().parse().unwrap();
    assert_eq!(losses(&dir, "run").len() as u64, step, "{text}");
    for saved in 1..=step {
        let state = dir.join("run").join(format!("checkpoint-{saved}")).join("state.json");
        assert!(state.is_file(), "no checkpoint at step {saved} of {step}:\n{text}");
    }
}

/// How many updates `dir/out/metrics.jsonl` has logged so far (0 before it exists).
fn losses_so_far(dir: &TempDir, out: &str) -> usize {
    let text = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter(|line| line.contains("\"loss\"")).count()
}

/// `--eval-only --json` on `checkpoint` with `--val-data`, in passes of 3 sequences: (loss, sequences,
/// targets).
fn evaluation(command: Command, dir: &TempDir, checkpoint: &Path) -> (f64, u64, u64) {
    let mut command = command;
    let val = dir.join("val.txt").display().to_string();
    let resume = checkpoint.display().to_string();
    let args = ["--resume", &resume, "--eval-only", "--json", "--val-data", &val, "--micro-batch", "3"];
    let output = command.args(args).args(["--threads", "1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let result = &summary["result"];
    (
        result["loss"].as_f64().unwrap(),
        result["sequences"].as_u64().unwrap(),
        result["targets"].as_u64().unwrap(),
    )
}

#[test]
fn sharded_evaluation_equals_one_process_within_1e_12() {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new("dist-eval");
    write_corpus(&dir);
    let words = ["green", "fields", "under", "a", "quiet", "sky", "and", "slow", "rivers", "run", "north."];
    let text: Vec<&str> = (0..500usize).map(|i| words[(i * 5 + i / 7) % words.len()]).collect();
    std::fs::write(dir.join("val.txt"), text.join(" ")).unwrap();
    one_process(&flags(&dir, "run", 3, 2, 1));
    let checkpoint = cola::train::checkpoint::locate(&dir.join("run")).unwrap();
    let single = evaluation(Command::new(program()), &dir, &checkpoint);
    let ranks = evaluation(mpirun(2), &dir, &checkpoint);
    assert!(single.1 >= 12, "only {} validation sequences: too few passes to share", single.1);
    assert_eq!((single.1, single.2), (ranks.1, ranks.2), "sequences and targets");
    assert!((single.0 - ranks.0).abs() <= 1e-12 * single.0.abs(), "loss {} vs {}", single.0, ranks.0);
}
