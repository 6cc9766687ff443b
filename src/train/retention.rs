//! Which checkpoints a run directory keeps (`--keep-checkpoints`, `--keep-every`). One pure rule,
//! [`Retention::retained`], decides from the steps alone; the checkpoint writer deletes the others after
//! every save. A checkpoint of cola-350m with its AdamW state is 2.2 GB, so by default only the latest is
//! kept; `--keep-every` keeps milestones for later comparison, and the checkpoint a run was resumed from
//! stays for the whole of that run, so that a resume gone wrong can be started again from the same place.
use super::{Result, TrainConfig, TrainError};
use std::fmt;
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;

/// How many of the newest checkpoints to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The newest N checkpoints.
    Latest(NonZeroUsize),
    /// Every checkpoint: nothing is deleted.
    All,
}

impl Default for Keep {
    /// The latest checkpoint only: it is all a resume needs.
    fn default() -> Keep {
        Keep::Latest(NonZeroUsize::MIN)
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Latest(n) => write!(f, "{n}"),
            Keep::All => f.write_str("all"),
        }
    }
}

impl FromStr for Keep {
    type Err = TrainError;

    /// `all`, or a positive count.
    fn from_str(text: &str) -> Result<Keep> {
        if text == "all" {
            return Ok(Keep::All);
        }
        text.parse::<NonZeroUsize>().map(Keep::Latest).map_err(|_| {
            TrainError::Config(format!("expected a number of checkpoints (at least 1) or all, got {text:?}"))
        })
    }
}

/// The retention rule of one invocation of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// The newest checkpoints kept.
    pub keep: Keep,
    /// Also keep every checkpoint whose step is a multiple of this (step 0 included); 0 keeps none.
    pub keep_every: u64,
    /// The step of the checkpoint of this run directory the invocation was resumed from: never deleted
    /// while the invocation runs.
    pub resumed_from: Option<u64>,
}

impl Retention {
    /// The rule of a run of `config` resumed from the checkpoint folder `resumed` of `step`, if any; that
    /// checkpoint is protected only where it lies in the run directory (a run resumed into another
    /// `--out` never deletes anything outside its own).
    pub fn of_run(config: &TrainConfig, resumed: Option<(&Path, u64)>) -> Retention {
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        let resumed_from = resumed
            .filter(|(dir, _)| dir.parent().is_some_and(|parent| same(parent, &config.out)))
            .map(|(_, step)| step);
        Retention { keep: config.keep_checkpoints, keep_every: config.keep_every, resumed_from }
    }

    /// The steps of `steps` (the complete checkpoints of a run directory, in any order) to keep, in
    /// ascending order without duplicates.
    pub fn retained(&self, steps: &[u64]) -> Vec<u64> {
        let mut sorted = steps.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let newest_from = match self.keep {
            Keep::All => 0,
            Keep::Latest(n) => sorted.len().saturating_sub(n.get()),
        };
        sorted
            .iter()
            .enumerate()
            .filter(|&(index, &step)| {
                index >= newest_from
                    || (self.keep_every > 0 && step.is_multiple_of(self.keep_every))
                    || self.resumed_from == Some(step)
            })
            .map(|(_, &step)| step)
            .collect()
    }
}
