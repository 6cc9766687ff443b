//! `docs/TOUR.md` cannot rot: every `cargo run --release --example tour -- <stop>` command in it is run
//! (through the same `cola::tour::run` the example prints) and the output block that follows the command
//! must match what the stop prints now. A block line matches an output line when its pieces between
//! `...` appear in order in it; a block line that is only `...` skips any number of output lines. Block
//! lines must match in order (exact text otherwise: the stops are seeded and deterministic). A command
//! followed by a `#` comment shows usage only and has no block.
use cola::tour::{self, Stop};

const TOUR: &str = include_str!("../../docs/TOUR.md");
const COMMAND: &str = "cargo run --release --example tour -- ";

/// `(stop name, expected lines)` for every command of the document, in order.
fn documented() -> Vec<(String, Vec<String>)> {
    let lines: Vec<&str> = TOUR.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // A command with a comment after it is an example of usage, not a stop with its output.
        let Some(stop) = line.trim().strip_prefix(COMMAND).filter(|rest| !rest.contains('#')) else {
            continue;
        };
        let stop = stop.split_whitespace().next().unwrap_or("").to_string();
        let open = (i + 1..lines.len()).find(|&j| lines[j].trim() == "```text").expect("an output block");
        let close = (open + 1..lines.len()).find(|&j| lines[j].trim() == "```").expect("a closed block");
        found.push((stop, lines[open + 1..close].iter().map(|l| l.to_string()).collect()));
    }
    found
}

/// Whether `pattern` (pieces separated by `...`) matches `line`.
fn line_matches(pattern: &str, line: &str) -> bool {
    let pieces: Vec<&str> = pattern.split("...").collect();
    if pieces.len() == 1 {
        return pattern.trim_end() == line.trim_end();
    }
    let mut rest = line;
    for (k, piece) in pieces.iter().enumerate() {
        let Some(at) = rest.find(piece) else { return false };
        if k == 0 && at != 0 {
            return false;
        }
        rest = &rest[at + piece.len()..];
    }
    pieces.last().is_some_and(|p| p.is_empty()) || rest.is_empty()
}

/// Matches the expected lines against the output in order, `...` lines skipping any output lines.
fn block_matches(expected: &[String], output: &[&str]) -> Result<(), String> {
    let mut at = 0;
    let mut skipping = false;
    for want in expected {
        if want.trim() == "..." {
            skipping = true;
            continue;
        }
        loop {
            let Some(got) = output.get(at) else { return Err(format!("missing line: {want}")) };
            at += 1;
            if line_matches(want, got) {
                break;
            }
            if !skipping {
                return Err(format!("expected: {want}\n     got: {got}"));
            }
        }
        skipping = false;
    }
    if !skipping && at < output.len() {
        return Err(format!("unexpected extra line: {}", output[at]));
    }
    Ok(())
}

#[test]
fn every_tour_command_prints_what_the_document_shows() {
    let commands = documented();
    let names: Vec<&str> = commands.iter().map(|(s, _)| s.as_str()).collect();
    let all: Vec<&str> = Stop::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, all, "the document shows every stop once, in order");
    for (name, expected) in &commands {
        let stop: Stop = name.parse().expect("a known stop");
        let printed = tour::run(stop).expect("the stop runs");
        let lines: Vec<&str> = printed.lines().collect();
        if let Err(why) = block_matches(expected, &lines) {
            panic!("docs/TOUR.md, stop {name}: {why}\nthe stop printed:\n{printed}");
        }
    }
}

#[test]
fn the_matcher_rejects_what_it_should() {
    assert!(line_matches("a ... c", "a b c"));
    assert!(!line_matches("a ... c", "a b d"));
    assert!(line_matches("x: ...", "x: avx512f"));
    assert!(!line_matches("exact", "exact but longer"));
    let out = ["one", "two", "three"];
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(block_matches(&want(&["one", "...", "three"]), &out).is_ok());
    assert!(block_matches(&want(&["one", "three"]), &out).is_err());
    assert!(block_matches(&want(&["one", "two"]), &out).is_err(), "extra output lines are an error");
}

/// A stop name the tour does not know is an error value that lists the stops, not a panic.
#[test]
fn an_unknown_stop_is_an_error_naming_the_stops() {
    let error = "lowrank".parse::<Stop>().expect_err("not a stop");
    let message = error.to_string();
    assert!(message.contains("\"lowrank\""), "{message}");
    for stop in Stop::ALL {
        assert!(message.contains(stop.name()), "{message} lacks {}", stop.name());
        assert_eq!(stop.name().parse::<Stop>().ok(), Some(stop), "every name parses back");
    }
}

#[test]
fn every_file_the_tour_names_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for piece in TOUR.split('`') {
        let looks_like_path = piece.contains('/') && !piece.contains(' ') && piece.ends_with(".rs")
            || piece.ends_with(".md") && piece.contains('/');
        if looks_like_path {
            assert!(root.join(piece).exists(), "docs/TOUR.md names {piece}, which does not exist");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} paths found");
}
