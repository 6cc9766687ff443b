//! What every rank must agree on between two updates: whether to stop (a signal reached some rank,
//! `super::stop`) and whether a time-based checkpoint is due (`--save-every-minutes`, by rank 0's clock).
//! Both are decided by one sum over the ranks at each step boundary, so that no rank leaves for a
//! checkpoint or the exit while another waits in the next update's collective calls.
use super::stop::StopSignal;
use super::Result;
use crate::dist::Collective;
use std::time::{Duration, Instant};

/// The decisions every rank takes at a step boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Boundary {
    /// Stop after saving: the signal with the highest code that reached any rank.
    pub stop: Option<StopSignal>,
    /// Save a checkpoint now because `--save-every-minutes` have passed on rank 0 since the last save.
    pub save: bool,
}

/// Rank 0's clock of time-based checkpoints: due once `every` has passed since the run started or since
/// the last checkpoint of any kind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SaveClock {
    every: Option<Duration>,
    since: Instant,
}

impl SaveClock {
    /// A clock of `minutes` (none: never due) started now.
    pub fn new(minutes: Option<f64>) -> SaveClock {
        SaveClock { every: minutes.map(|m| Duration::from_secs_f64(m * 60.0)), since: Instant::now() }
    }

    pub fn due(&self) -> bool {
        self.every.is_some_and(|every| self.since.elapsed() >= every)
    }

    /// A checkpoint was written: the next is due `every` from now.
    pub fn reset(&mut self) {
        self.since = Instant::now();
    }
}

/// The boundary's decisions from this rank's view (`stop`, and `save_due` from its clock, which only rank
/// 0's counts): with one rank as they are; with several, summed over the ranks in f64 (one slot per
/// signal and one for the clock, exact in f64), so that every rank gets the same answer.
pub(crate) fn agree(world: &dyn Collective, stop: Option<StopSignal>, save_due: bool) -> Result<Boundary> {
    if world.world_size() == 1 {
        return Ok(Boundary { stop, save: save_due });
    }
    let mut votes = [0.0f64; StopSignal::ALL.len() + 1];
    if let Some(signal) = stop {
        votes[usize::from(signal.code()) - 1] = 1.0;
    }
    votes[StopSignal::ALL.len()] = f64::from(u8::from(save_due && world.is_root()));
    world.all_reduce_sum_f64(&mut votes)?;
    let stop = StopSignal::ALL.into_iter().rev().find(|signal| votes[usize::from(signal.code()) - 1] > 0.0);
    Ok(Boundary { stop, save: votes[StopSignal::ALL.len()] > 0.0 })
}

#[cfg(test)]
mod tests {
    //! One process decides alone; a clock without minutes is never due and one of zero minutes always is.
    use super::*;
    use crate::dist::Single;

    #[test]
    fn one_rank_decides_alone_and_the_clock_runs_from_the_last_save() {
        let both = agree(&Single, Some(StopSignal::User1), true).unwrap();
        assert_eq!(both, Boundary { stop: Some(StopSignal::User1), save: true });
        assert_eq!(agree(&Single, None, false).unwrap(), Boundary { stop: None, save: false });
        assert!(!SaveClock::new(None).due());
        let mut clock = SaveClock::new(Some(0.0));
        assert!(clock.due());
        clock.reset();
        assert!(clock.due());
        assert!(!SaveClock::new(Some(60.0)).due());
    }
}
