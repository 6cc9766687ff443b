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
