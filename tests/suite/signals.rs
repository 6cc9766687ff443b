//! The training program stopped by a signal, as a scheduler or `timeout` stops it: a real process on
//! cola-tiny (a 300-entry BPE of a small corpus, 16 tokens per sequence, one compute thread), sent SIGTERM
//! or SIGUSR1 once it has logged an update.
//!
//! What it proves:
//! - the run ends after the update in progress with exit status 75 (`EXIT_STOPPED`), prints one line
//!   naming the signal, the step and the checkpoint, and that checkpoint is complete on disk;
//! - `--resume` from it continues the uninterrupted trajectory BIT FOR BIT: every logged loss and the
//!   final weights equal those of a run that was never stopped (same flags, `--stop-after` the same
//!   step). Resume is exact already, so any difference would be a stop that lost or repeated an update;
//! - `--save-every-minutes` writes checkpoints by time alone (`--save-every 0`).
//!
//! About 10 s on 2 shared cores (four short runs, the data prepared once).
use crate::common;

use common::{training, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The training program (built as by `cargo build --release --example llama_cola_350m`).
fn program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| training::build_training_program(&[]))
}

/// The flags of a tiny run into `dir/out` whose schedule spans far more steps than any test trains.
fn flags(dir: &TempDir, out: &str) -> Vec<String> {
    let rest = [
        ("--steps", "100000"),
        ("--batch-size", "2"),
        ("--micro-batch", "1"),
        ("--warmup", "2"),
        ("--lr", "1e-2"),
        ("--eval-every", "0"),
        ("--save-every", "0"),
        ("--keep-checkpoints", "all"),
    ];
    training::tiny_run_flags(dir, out, &rest.map(|(flag, value)| (flag, value.to_string())))
}

fn write_corpus(dir: &TempDir) {
    let sentences =
        ["the cat sat on the mat.", "a dog ran to the red house.", "we bake bread every morning."];
    let text: Vec<&str> = (0..300usize).map(|i| sentences[(i * 7 + i / 3) % 3]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
}

/// The train losses of `dir/out/metrics.jsonl`, in step order (empty while the file does not exist).
fn losses(dir: &TempDir, out: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join(out).join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value.get("loss").and_then(serde_json::Value::as_f64))
        .collect()
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> ExitStatus {
    let began = Instant::now();
    while began.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("the run did not stop within {limit:?} of the signal");
}

/// Starts a run into `dir/out`, waits until it has logged `updates` updates, sends `signal` (a `kill`
/// name) and returns its exit status, its stderr and the step its stop line names.
fn stop_with(
    dir: &TempDir,
    out: &str,
    extra: &[&str],
    updates: usize,
    signal: &str,
) -> (ExitStatus, String, u64) {
    let mut args = flags(dir, out);
    args.extend(extra.iter().map(|s| s.to_string()));
    let stderr_path = dir.join(&format!("{out}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(program())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let began = Instant::now();
    while losses(dir, out).len() < updates {
        assert!(began.elapsed() < Duration::from_secs(120), "no update logged after 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was signalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(sent.success());
    let status = wait_with_limit(&mut child, Duration::from_secs(60));
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let line = text.lines().find(|l| l.starts_with("stopped by ")).unwrap_or_else(|| panic!("{text}"));
    let step = line
        .split(" at step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|step| step.parse().ok())
        .unwrap_or_else(|| panic!("no step in {line:?}"));
    (status, text, step)
}

fn weights(dir: &TempDir, out: &str) -> Vec<u8> {
    let checkpoint = cola::train::checkpoint::locate(&dir.join(out)).unwrap();
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

fn run_to_end(args: &[String]) {
    let output = Command::new(program()).args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn sigterm_saves_a_checkpoint_exits_75_and_resume_matches_an_uninterrupted_run_bit_for_bit() {
    let dir = TempDir::new("signal-term");
    write_corpus(&dir);
    let (status, stderr, step) = stop_with(&dir, "stopped", &[], 1, "TERM");
    assert_eq!(status.code(), Some(cola::train::EXIT_STOPPED.into()), "{stderr}");
    let checkpoint = dir.join("stopped").join(format!("checkpoint-{step}"));
    let line = format!("stopped by SIGTERM at step {step}: checkpoint {} saved", checkpoint.display());
    assert!(stderr.contains(&line), "expected {line:?} in:\n{stderr}");
    assert!(stderr.contains(&format!("--resume {}", dir.join("stopped").display())), "{stderr}");
    assert!(
        checkpoint.join(cola::train::STATE_FILE).is_file() && checkpoint.join("model.safetensors").is_file()
    );
    assert!(step >= 1 && losses(&dir, "stopped").len() as u64 == step);

    // Three more updates from the checkpoint against one run that never stopped.
    let end = (step + 3).to_string();
    let resume =
        ["--resume", &dir.join("stopped").display().to_string(), "--threads", "1", "--stop-after", &end];
    run_to_end(&resume.map(String::from));
    let mut whole = flags(&dir, "whole");
    whole.extend(["--stop-after".into(), end]);
    run_to_end(&whole);
    let (resumed, uninterrupted) = (losses(&dir, "stopped"), losses(&dir, "whole"));
    assert_eq!(resumed.len() as u64, step + 3);
    let bits = |v: &[f64]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&resumed), bits(&uninterrupted), "losses: {resumed:?} vs {uninterrupted:?}");
    assert!(weights(&dir, "stopped") == weights(&dir, "whole"), "the final weights differ");
}

#[test]
fn sigusr1_stops_the_same_way_and_minutes_alone_write_checkpoints() {
    let dir = TempDir::new("signal-usr1");
    write_corpus(&dir);
    // 1e-6 minutes (60 us) is shorter than any update, so every step boundary after the first update saves.
    let (status, stderr, step) = stop_with(&dir, "stopped", &["--save-every-minutes", "1e-6"], 2, "USR1");
    assert_eq!(status.code(), Some(cola::train::EXIT_STOPPED.into()), "{stderr}");
    assert!(stderr.contains(&format!("stopped by SIGUSR1 at step {step}: checkpoint")), "{stderr}");
    let run = dir.join("stopped");
    assert!(step >= 2, "stopped at step {step} after 2 logged updates");
    for saved in 1..=step {
        let state = run.join(format!("checkpoint-{saved}")).join(cola::train::STATE_FILE);
        assert!(state.is_file(), "no checkpoint at step {saved} of {step}:\n{stderr}");
    }
}
