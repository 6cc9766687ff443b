//! `docs/AUDIT.md` cannot drift from the code. It is written by `cargo run --release --example audit_doc`,
//! and rendering it compares every closed form of `cola::audit::formulas` with what the code gives
//! (parameter counts of all 12 presets from their shapes and of allocated small models, the profiler's
//! FLOPs and the tape's saved bytes of recorded steps on small models of the presets' widths), failing on
//! any difference. Here the document is rendered again and must equal the committed file; the closed
//! forms are also checked directly for every preset, and against the figures the README quotes for 350m.
//!
//! Everything compared is an exact integer (counts, FLOPs, bytes), so the comparisons are `==`. The render
//! records 45 small steps (64-entry vocabulary, 2 x 16 tokens, one or two layers of at most 350m's
//! widths): a few seconds.
use cola::audit::checks::{agree, AuditError};
use cola::audit::document::{self, COMMAND};
use cola::audit::formulas::{counted, params, saved_bytes, Batch, Dims};
use cola::autograd::Policy;
use cola::nn::{Family, Preset, Size};

const COMMITTED: &str = include_str!("../../docs/AUDIT.md");

#[test]
fn the_committed_document_is_what_the_program_writes() {
    let written = document::render().unwrap_or_else(|e| panic!("rendering docs/AUDIT.md failed: {e}"));
    if written != COMMITTED {
        let line = written.lines().zip(COMMITTED.lines()).position(|(a, b)| a != b);
        let at = line.map_or(written.lines().count().min(COMMITTED.lines().count()), |i| i);
        panic!(
            "docs/AUDIT.md differs from what the program writes (first at line {}):\n  committed: {}\n  \
             written:   {}\nrewrite it with `{COMMAND}`",
            at + 1,
            COMMITTED.lines().nth(at).unwrap_or("<end of file>"),
            written.lines().nth(at).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn the_parameter_formula_gives_every_presets_count() {
    for preset in Preset::ALL {
        let config = preset.config();
        let counts = config.param_counts();
        let formula = params(&Dims::of(&config));
        assert_eq!(formula.total, counts.total as u64, "{preset}: total");
        assert_eq!(formula.low_rank, counts.low_rank as u64, "{preset}: low-rank");
        assert_eq!(formula.dense, counts.other as u64, "{preset}: dense");
    }
}

/// The 350m figures of the README (f32, one sequence of 256 tokens; per token they do not depend on the
/// batch), which the render checks against the tape at 350m's widths.
#[test]
fn the_350m_figures_follow_from_the_closed_form() {
    let per_token = |family, policy| {
        let dims = Dims::of(&Preset::new(family, Size::M350).config());
        saved_bytes(&dims, Batch { b: 1, n: 256 }, policy, 4) / 256
    };
    assert_eq!(per_token(Family::Cola, Policy::ColaM), 376_816);
    assert_eq!(per_token(Family::Cola, Policy::KeepAll), 1_926_640);
    assert_eq!(per_token(Family::Full, Policy::KeepAll), 1_582_576);
    assert_eq!(per_token(Family::Cola, Policy::Block), 106_480);
    assert_eq!(per_token(Family::Full, Policy::Block), 106_480);
    // Replays only add: cola-m replays less than block, and neither changes forward or backward.
    let dims = Dims::of(&Preset::new(Family::Cola, Size::M350).config());
    let batch = Batch { b: 1, n: 256 };
    let count = |policy| counted(&dims, batch, policy).expect("a training policy");
    let (none, cola_m, block) = (count(Policy::KeepAll), count(Policy::ColaM), count(Policy::Block));
    assert!(counted(&dims, batch, Policy::RecomputeAll).is_none(), "`all` is not modelled");
    assert_eq!(none.recompute, 0);
    assert!(0 < cola_m.recompute && cola_m.recompute < block.recompute);
    assert_eq!((none.forward_rows(), none.backward), (block.forward_rows(), block.backward));
}

#[test]
fn a_mismatch_is_an_error_naming_both_values() {
    assert_eq!(agree(|| "same".into(), 7, 7).unwrap(), 7);
    let error = agree(|| "cola-tiny: total parameters".into(), 10, 11).unwrap_err();
    assert!(matches!(error, AuditError::Mismatch { formula: 10, measured: 11, .. }));
    let message = error.to_string();
    assert!(
        message.contains("cola-tiny: total parameters") && message.contains("10") && message.contains("11")
    );
}
