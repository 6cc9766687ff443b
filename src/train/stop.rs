//! Stopping a run cleanly when asked to: a scheduler's warning signal (Slurm's `--signal=USR1@120`), a
//! termination request (SIGTERM: `kill`, `timeout`, Slurm at the end of a job's time) or Ctrl-C (SIGINT).
//! The signal only records itself in a [`StopRequest`]; the step loop reads it at the next step boundary,
//! so the update in progress completes, a checkpoint is written atomically, and the run ends with
//! [`EXIT_STOPPED`]. Under several ranks the request is reduced over the ranks at that boundary
//! (`super::boundary`), so a signal that reaches one rank stops every rank at the same step.
//!
//! A second signal while the first is being honoured exits at once with `128 + signal number`, the
//! shell's convention for death by that signal: the last complete checkpoint stays, since checkpoints are
//! renamed into place only once written.
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// The exit status of a run stopped by a signal after saving a checkpoint: 75, `EX_TEMPFAIL` of
/// `sysexits.h` ("temporary failure, retry later"). It differs from 0 (done), 1 (error) and the
/// `128 + n` of a process killed by signal `n`, so a job script can tell "resume with --resume" apart
/// from a failure and requeue the job.
pub const EXIT_STOPPED: u8 = 75;

/// The signals that stop a run after the current update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: `kill`, `timeout`, a scheduler ending the job.
    Terminate,
    /// SIGUSR1: a scheduler's advance warning (`#SBATCH --signal=USR1@120`).
    User1,
}

impl StopSignal {
    /// Every stop signal, in the order of their codes (1, 2, 3).
    pub const ALL: [StopSignal; 3] = [StopSignal::Interrupt, StopSignal::Terminate, StopSignal::User1];

    /// The conventional name, as `kill -l` prints it with the `SIG` prefix.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::User1 => "SIGUSR1",
        }
    }

    /// The signal number on this system (SIGUSR1 is 10 on Linux, 30 on macOS): `128 +` this is the
    /// exit status of a process this signal kills.
    #[cfg(unix)]
    pub fn number(self) -> i32 {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        match self {
            StopSignal::Interrupt => SIGINT,
            StopSignal::Terminate => SIGTERM,
            StopSignal::User1 => SIGUSR1,
        }
    }

    /// The Linux numbers, where there are no Unix signals to ask.
    #[cfg(not(unix))]
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => 2,
            StopSignal::Terminate => 15,
            StopSignal::User1 => 10,
        }
    }

    /// A nonzero code for the atomic cell and for the reduction over ranks; `0` is "no request".
    pub(crate) fn code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 1,
            StopSignal::Terminate => 2,
            StopSignal::User1 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<StopSignal> {
        StopSignal::ALL.into_iter().find(|signal| signal.code() == code)
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The first stop signal this process received, if any; shared between the thread that receives signals
/// and the step loop.
#[derive(Debug, Default)]
pub struct StopRequest(AtomicU8);

impl StopRequest {
    pub fn new() -> StopRequest {
        StopRequest::default()
    }

    /// A request already made, as if `signal` had arrived (tests, and a caller that decides to stop).
    pub fn requested_by(signal: StopSignal) -> StopRequest {
        let request = StopRequest::new();
        request.request(signal);
        request
    }

    /// Records `signal` unless a signal was already recorded; returns whether this was the first.
    pub fn request(&self, signal: StopSignal) -> bool {
        self.0.compare_exchange(0, signal.code(), Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// The first signal recorded, if any.
    pub fn get(&self) -> Option<StopSignal> {
        StopSignal::from_code(self.0.load(Ordering::SeqCst))
    }
}

/// Installs the handlers of SIGINT, SIGTERM and SIGUSR1 for the rest of the process's life and returns
/// the request they fill. A thread of `signal-hook` receives the signals (no work happens in the signal
/// handler itself): the first is recorded and announced on stderr, a second one exits at once. `Err`
/// when the handlers cannot be installed; the run can then still go on, without a checkpoint on a signal.
#[cfg(unix)]
pub fn install_handlers() -> std::io::Result<Arc<StopRequest>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let request = Arc::new(StopRequest::new());
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])?;
    let seen = request.clone();
    std::thread::Builder::new().name("stop-signals".into()).spawn(move || {
        for number in signals.forever() {
            let Some(signal) = StopSignal::ALL.into_iter().find(|s| s.number() == number) else { continue };
            if seen.request(signal) {
                eprintln!(
                    "\n{signal}: finishing this update, then saving a checkpoint and stopping (a second signal \
                     exits at once)"
                );
            } else {
                eprintln!("\n{signal} again: exiting without saving; the last complete checkpoint stays");
                std::process::exit(128 + signal.number());
            }
        }
    })?;
    Ok(request)
}

/// Without Unix signals there is nothing to install: the request is never made.
#[cfg(not(unix))]
pub fn install_handlers() -> std::io::Result<Arc<StopRequest>> {
    Ok(Arc::new(StopRequest::new()))
}

#[cfg(test)]
mod tests {
    //! The request keeps the first signal, and the codes round-trip (the reduction over ranks sends them).
    use super::*;

    #[test]
    fn the_first_signal_is_kept_and_codes_round_trip() {
        let request = StopRequest::new();
        assert_eq!(request.get(), None);
        assert!(request.request(StopSignal::User1));
        assert!(!request.request(StopSignal::Terminate));
        assert_eq!(request.get(), Some(StopSignal::User1));
        for signal in StopSignal::ALL {
            assert_eq!(StopSignal::from_code(signal.code()), Some(signal));
        }
        assert_eq!(StopSignal::from_code(0), None);
        assert_eq!(StopSignal::Terminate.to_string(), "SIGTERM");
    }
}
