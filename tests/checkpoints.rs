//! Checkpoints of the training program: which ones a run directory keeps (`--keep-checkpoints`,
//! `--keep-every`, the pure rule and the runs that apply it, also across a resume), the lock that gives a
//! run directory to one process, and the Hugging Face `config.json` that lets `transformers` load a
//! full-rank checkpoint unchanged. Retention and lock checks are exact (steps, pids, file contents); the
//! logits comparison with `transformers` is within 1e-5 in f32 (see that test).
mod common;

use clap::Parser;
use cola::train::lock::{host_name, pid_alive, LockOwner};
use cola::train::{
    self, checkpoint, Keep, Options, Retention, RunLock, RunOutcome, TrainError, LOCK_FILE, STATE_FILE,
};
use common::training::{tiny_config, trained, write_corpus};
use common::TempDir;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn latest(n: usize) -> Keep {
    Keep::Latest(NonZeroUsize::new(n).unwrap())
}

fn rule(keep: Keep, keep_every: u64, resumed_from: Option<u64>) -> Retention {
    Retention { keep, keep_every, resumed_from }
}

#[test]
fn retention_keeps_the_newest_the_milestones_and_the_checkpoint_resumed_from() {
    assert_eq!(Retention::default(), rule(latest(1), 0, None));
    assert_eq!(Retention::default().retained(&[3, 6, 9]), vec![9]);
    assert_eq!(Retention::default().retained(&[]), Vec::<u64>::new());
    // Any order and repeats in, ascending distinct steps out.
    assert_eq!(rule(latest(2), 0, None).retained(&[12, 3, 9, 6, 9]), vec![9, 12]);
    assert_eq!(rule(latest(5), 0, None).retained(&[4, 2]), vec![2, 4]);
    assert_eq!(rule(Keep::All, 0, None).retained(&[1, 2, 3]), vec![1, 2, 3]);
    // Multiples of --keep-every (0 is one) besides the newest.
    assert_eq!(rule(latest(1), 4, None).retained(&[0, 2, 4, 6, 8, 10]), vec![0, 4, 8, 10]);
    assert_eq!(rule(latest(2), 5, None).retained(&[3, 5, 7, 9]), vec![5, 7, 9]);
    // The checkpoint resumed from stays while newer ones are written; a step that is not there adds none.
    assert_eq!(rule(latest(1), 0, Some(2)).retained(&[2, 4, 6]), vec![2, 6]);
    assert_eq!(rule(latest(1), 0, Some(5)).retained(&[2, 4, 6]), vec![6]);
}

fn parse(args: &[&str]) -> Result<Options, String> {
    Options::try_parse_from(std::iter::once("llama_cola_350m").chain(args.iter().copied()))
        .map_err(|e| e.to_string())
}

#[test]
fn keep_flags_parse_into_typed_values() {
    let options = parse(&["--keep-checkpoints", "3", "--keep-every", "500"]).unwrap();
    assert_eq!((options.keep_checkpoints, options.keep_every), (Some(latest(3)), Some(500)));
    assert_eq!(parse(&["--keep-checkpoints", "all"]).unwrap().keep_checkpoints, Some(Keep::All));
    assert_eq!(parse(&[]).unwrap().keep_checkpoints, None);
    for bad in ["0", "two", "-1", ""] {
        let error = parse(&[&format!("--keep-checkpoints={bad}")]).unwrap_err();
        assert!(error.contains("expected a number of checkpoints (at least 1) or all"), "{bad}: {error}");
    }
    assert!(parse(&["--keep-every", "often"]).unwrap_err().contains("often"));
    assert_eq!((latest(7).to_string(), Keep::All.to_string()), ("7".to_string(), "all".to_string()));
}

fn steps_in(run: &Path) -> Vec<u64> {
    checkpoint::list(run).into_iter().map(|(step, _)| step).collect()
}

#[test]
fn runs_keep_what_the_rule_says_and_a_resume_keeps_the_run_s_rule_unless_told_otherwise() {
    let dir = TempDir::new("keep");
    write_corpus(&dir);
    let mut config = tiny_config(&dir, "cola-tiny", "run", 12);
    config.save_every = 2;
    config.keep_checkpoints = latest(2);
    config.keep_every = 4;
    config.stop_after = Some(6);
    trained(&config);
    let run = dir.join("run");
    assert_eq!(steps_in(&run), vec![4, 6], "saved 2, 4, 6: the newest two, 4 also a milestone");
    let saved = checkpoint::read_state(&run.join("checkpoint-6")).unwrap().config;
    assert_eq!((saved.keep_checkpoints, saved.keep_every), (latest(2), 4));

    // Resumed through the command line's path: the run's own rule, and step 6 is not deleted by it.
    let options =
        Options { resume: Some(run.clone()), cache_dir: Some(dir.join("cache")), ..Options::default() };
    let (resumed, _) = train::resolve(&options).unwrap();
    assert_eq!((resumed.keep_checkpoints, resumed.keep_every), (latest(2), 4));
    assert_eq!(trained(&resumed).steps, 12);
    assert_eq!(steps_in(&run), vec![4, 6, 8, 10, 12]);

    // Flags given on resume replace the rule; the new one is what the next state.json holds.
    let options = Options {
        resume: Some(run.clone()),
        cache_dir: Some(dir.join("cache")),
        steps: Some(14),
        keep_checkpoints: Some(latest(1)),
        keep_every: Some(0),
        ..Options::default()
    };
    let (again, _) = train::resolve(&options).unwrap();
    assert_eq!(trained(&again).steps, 14);
    assert_eq!(steps_in(&run), vec![12, 14], "the newest, and 12 which this run resumed from");
    let saved = checkpoint::read_state(&run.join("checkpoint-14")).unwrap().config;
    assert_eq!((saved.keep_checkpoints, saved.keep_every), (latest(1), 0));

    // --keep-checkpoints all deletes nothing.
    let mut all = tiny_config(&dir, "full-tiny", "all", 6);
    all.save_every = 2;
    all.keep_checkpoints = Keep::All;
    trained(&all);
    assert_eq!(steps_in(&dir.join("all")), vec![2, 4, 6]);
}

/// The pid of a process that has exited and been reaped: no longer alive on this host.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn owner_of(lock: &Path) -> LockOwner {
    serde_json::from_slice(&std::fs::read(lock).unwrap()).unwrap()
}

#[test]
fn a_run_directory_lock_conflicts_is_released_on_drop_and_a_stale_one_is_taken_over() {
    let dir = TempDir::new("lock");
    let run = dir.join("run");
    let lock_file = run.join(LOCK_FILE);
    let first = RunLock::acquire(&run).unwrap();
    assert_eq!(first.path(), lock_file);
    assert_eq!(owner_of(&lock_file), LockOwner { pid: std::process::id(), host: host_name() });
    assert!(first.note().is_none());

    let error = RunLock::acquire(&run).unwrap_err();
    assert!(matches!(error, TrainError::Locked { .. }), "{error}");
    let message = error.to_string();
    let pid = format!("pid {}", std::process::id());
    assert!(message.contains(&pid) && message.contains(&lock_file.display().to_string()), "{message}");
    drop(first);
    assert!(!lock_file.exists(), "dropping the guard removes the lock file");

    // A lock left by a process that is gone is taken over, with a note naming it.
    let gone = dead_pid();
    assert!(pid_alive(std::process::id()) && !pid_alive(gone));
    let stale = LockOwner { pid: gone, host: host_name() };
    std::fs::write(&lock_file, serde_json::to_vec(&stale).unwrap()).unwrap();
    let taken = RunLock::acquire(&run).unwrap();
    let note = taken.note().unwrap();
    assert!(note.contains(&format!("process {gone}")) && note.contains("no longer running"), "{note}");
    assert_eq!(owner_of(&lock_file).pid, std::process::id());
    drop(taken);

    // A lock of another host cannot be checked from here: reported, left as it is.
    let remote = LockOwner { pid: gone, host: "elsewhere.example".into() };
    std::fs::write(&lock_file, serde_json::to_vec(&remote).unwrap()).unwrap();
    let message = RunLock::acquire(&run).unwrap_err().to_string();
    assert!(message.contains("elsewhere.example") && message.contains(&format!("pid {gone}")), "{message}");
    assert_eq!(owner_of(&lock_file), remote);
    // Nor is a lock file that names no owner broken.
    std::fs::write(&lock_file, b"").unwrap();
    let message = RunLock::acquire(&run).unwrap_err().to_string();
    assert!(message.contains("does not name its owner"), "{message}");
    assert!(lock_file.exists());
}

#[test]
fn training_holds_the_lock_for_its_duration_and_eval_only_needs_none() {
    let dir = TempDir::new("run-lock");
    write_corpus(&dir);
    let config = tiny_config(&dir, "cola-tiny", "run", 2);
    trained(&config);
    let lock_file = dir.join("run").join(LOCK_FILE);
    assert!(!lock_file.exists(), "released at the end of the run");

    // Another holder: training refuses, naming it; evaluating the checkpoint only reads.
    let held = RunLock::acquire(&dir.join("run")).unwrap();
    let mut resume = tiny_config(&dir, "cola-tiny", "run", 4);
    resume.resume = Some(dir.join("run"));
    let error = train::run(&resume).unwrap_err();
    assert!(matches!(error, TrainError::Locked { .. }), "{error}");
    resume.eval_only = true;
    assert!(matches!(train::run(&resume).unwrap(), RunOutcome::Evaluated(_)));
    drop(held);

    // Released on an error after it was taken, and on an interrupted run.
    let mut failing = tiny_config(&dir, "cola-tiny", "failing", 2);
    failing.data = Some(dir.join("missing.txt"));
    assert!(train::run(&failing).unwrap_err().to_string().contains("missing.txt"));
    assert!(!dir.join("failing").join(LOCK_FILE).exists());
    let mut interrupted = tiny_config(&dir, "cola-tiny", "interrupted", 2);
    interrupted.interrupt = Some(Arc::new(AtomicBool::new(true)));
    assert!(trained(&interrupted).interrupted);
    assert!(!dir.join("interrupted").join(LOCK_FILE).exists());
    assert!(dir.join("interrupted").join("checkpoint-0").join(STATE_FILE).is_file());
}
