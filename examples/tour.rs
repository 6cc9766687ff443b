//! The guided tour of `docs/TOUR.md`: prints one stop of a token's walk through one training step.
//!
//!     cargo run --release --example tour -- tape
//!
//! Stops, in order: gemm, views (the prologue), tokens, embedding, rmsnorm, cola, rope, attention, mlp,
//! head, tape, recompute, accumulate, adamw, schedule, bf16, ranks, checkpoint, decode (no argument:
//! all of them).
use cola::tour::{self, Stop};
use std::process::ExitCode;

fn main() -> ExitCode {
    let stops: Result<Vec<Stop>, tour::TourError> = match std::env::args().nth(1) {
        None => Ok(Stop::ALL.to_vec()),
        Some(name) => name.parse().map(|stop| vec![stop]),
    };
    let stops = match stops {
        Ok(stops) => stops,
        Err(message) => {
            eprintln!("tour: {message}");
            return ExitCode::from(2);
        }
    };
    for stop in stops {
        match tour::run(stop) {
            Ok(text) => print!("{text}"),
            Err(error) => {
                eprintln!("tour {}: {error}", stop.name());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
