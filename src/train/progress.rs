//! Terminal output of a run, on stderr: an indicatif bar (step, loss, lr, tokens/s, ETA) when stderr is a
//! terminal, otherwise one line per step so that logs of background runs (`nohup ... > log`) show
//! progress too. Notes (evaluations, checkpoints) print above the bar.
use super::trainer::StepStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    /// The last step's message, shown again when a status (evaluating, saving) is over.
    last: std::cell::RefCell<String>,
    verbose: bool,
    total: u64,
}

impl Progress {
    /// A reporter for a run of `total` updates starting after `done`; silent unless `verbose`.
    pub(crate) fn new(verbose: bool, done: u64, total: u64) -> Progress {
        let bar = (verbose && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:28.cyan/blue}] {pos}/{len} [{elapsed_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix("train");
            bar.set_position(done);
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Progress { bar, last: Default::default(), verbose, total }
    }

    /// A line above the bar (or on its own without one).
    pub(crate) fn note(&self, message: &str) {
        if !self.verbose {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// What the run is doing now (shown in the bar's message until the next step replaces it).
    pub(crate) fn status(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    /// Ends a [`Progress::status`]: the bar shows the last step's numbers again.
    pub(crate) fn restore(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.last.borrow().clone());
        }
    }

    /// Reports a finished update; `eta` is the caller's estimate for the remaining updates.
    pub(crate) fn step(&self, stats: &StepStats, tokens_per_s: f64, eta: Duration) {
        let done = stats.step + 1;
        // indicatif's own ETA misjudges steps of tens of seconds; the caller's mean step time does not.
        let message = format!(
            "loss {:.4} | lr {:.2e} | {:.0} tok/s | eta {}",
            stats.loss,
            stats.lr,
            tokens_per_s,
            format_duration(eta)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(message.clone());
                bar.set_position(done);
                *self.last.borrow_mut() = message;
            }
            None if self.verbose => {
                eprintln!("step {done}/{} | {message} | grad norm {:.3}", self.total, stats.grad_norm)
            }
            None => {}
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// The flags of the quick start (README.md): cola-60m for a few minutes on a CPU, a run whose loss
/// visibly falls. Printed by [`long_run_hint`] and run by `tests/suite/docs_commands.rs`, which also checks
/// that the README shows this command.
pub const QUICK_START_FLAGS: &str = "--model cola-60m --steps 100 --batch-size 4";

/// A run whose first step says it will take longer than this points to the quick start.
pub const LONG_RUN: Duration = Duration::from_secs(24 * 3600);

/// The note a run prints after its first step when the estimated time left, `eta`, exceeds
/// [`LONG_RUN`]: the defaults are the paper's recipe (cola-350m, 60,000 steps), hundreds of hours on a
/// CPU, which a first-time user rarely means to start.
pub fn long_run_hint(eta: Duration) -> Option<String> {
    (eta > LONG_RUN).then(|| {
        format!(
            "note: at this pace the run ends in {}; to see a model train in a few minutes, stop it (Ctrl-C \
             saves a checkpoint) and run `cargo run --release --example llama_cola_350m -- {QUICK_START_FLAGS}`",
            format_duration(eta)
        )
    })
}

/// `1h02m03s`, `4m05s`, `6.0s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let whole = secs as u64;
    if whole >= 3600 {
        format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60)
    } else if whole >= 60 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint appears exactly past one day of estimated time left, and names the quick start's flags.
    #[test]
    fn long_runs_point_to_the_quick_start() {
        let day = LONG_RUN.as_secs();
        assert_eq!(long_run_hint(Duration::from_secs(day)), None);
        assert_eq!(long_run_hint(Duration::from_secs(3 * 60)), None);
        let hint = long_run_hint(Duration::from_secs(day + 1)).expect("a hint past a day");
        assert!(hint.contains("24h00m01s"), "{hint}");
        assert!(hint.contains(&format!("--example llama_cola_350m -- {QUICK_START_FLAGS}`")), "{hint}");
    }
}
