//! The commands the pages show cannot drift from the programs: every `cargo run` and `scripts/` command
//! of README.md and docs/*.md (in code blocks and in inline code) is found here, and each one is either
//! run by this test, or covered by another test (`--example tour`: tests/suite/tour.rs runs docs/TOUR.md), or
//! listed in [`NOT_RUN`] with the reason it is not run here (a GPU, MPI, PyTorch, a download, or minutes
//! to hours of compute). A command in none of these fails the test, and so does a listed one that no page
//! shows any more.
//!
//! Every command's flags are checked, run or not: the clap programs (`llama_cola_350m`, `generate`,
//! `prepare_data`) parse them with `--help` appended (clap reads the arguments in order, so an unknown
//! flag or a bad value fails before the help is printed); the programs with hand-written parsers must
//! name each flag as a string literal in their source, and a script must mention each flag and each
//! environment variable the command sets. So a renamed flag fails here.
//!
//! The runs: every `llama_cola_350m` command runs with its flags made small ([`SMALL`]: cola-tiny, 2
//! steps of 2 x 16 tokens on a generated 300-entry-BPE corpus, 1 thread), `generate` continues the
//! prompt from the checkpoint of such a run. The profile sample of README.md must show exactly the
//! rows (direction and op family) that `--profile` prints now on cola-tiny, which has the same op
//! families as cola-60m, and its columns must add up (the tolerances are the rounding of the printed
//! figures). The quick start in README.md must be the command `long_run_hint` prints. About 1 s once
//! the examples are built (`cargo test` builds them first).
use cola::train::QUICK_START_FLAGS;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common;
use common::TempDir;

/// Commands this test does not run, each with why (their flags are still checked).
const NOT_RUN: &[(&str, &str)] = &[
    ("scripts/install_nvrtc.sh", "downloads about 61 MB of NVRTC wheels from PyPI"),
    ("scripts/install_mpi.sh", "installs Open MPI with the system's package manager"),
    (
        "cargo run --release --example prepare_data -- --data 'c4/en/c4-train.*-of-01024.json.gz' \
         --tokenizer t5/tokenizer.json",
        "needs the C4 corpus (hundreds of GB) and the T5 tokenizer",
    ),
    (
        "cargo run --release --example llama_cola_350m -- --data 'c4/en/c4-train.*-of-01024.json.gz' \
         --tokenizer t5/tokenizer.json",
        "needs the C4 corpus (hundreds of GB) and the T5 tokenizer",
    ),
    ("scripts/reference/hf_load.py CHECKPOINT LOGITS_JSON", "needs PyTorch and transformers"),
    ("scripts/reference/run.sh", "needs PyTorch (writes the parity fixtures)"),
    ("cargo run --release --example bench_inference", "cola-350m against full-350m: tens of minutes"),
    (
        "cargo run --release --example bench_memory -- --batch 1 --seq 256",
        "five 350m steps and more: minutes",
    ),
    ("scripts/bench_gemm_vs_numpy.sh 5", "needs numpy; minutes of GEMM timing"),
    ("PEAK=1 scripts/bench_gemm_vs_numpy.sh 3", "needs numpy; minutes of GEMM timing"),
    ("scripts/bench_gemm_vs_numpy.sh 3", "needs numpy; minutes of GEMM timing"),
    (
        "ROWS=cola-60m:8:8 STEPS=4 TORCH_PRECISIONS=f32 scripts/bench_cpu_vs_torch.sh 2",
        "needs PyTorch; trains cola-60m in three precisions and PyTorch's f32 twice: ten minutes",
    ),
    ("scripts/bench_cpu_step.sh OLD NEW 3", "builds two trees and trains cola-350m: an hour"),
    ("scripts/bench_data.sh [--size-mb 1024] [--python PY]", "tokenizes a 1 GiB corpus: 15 minutes"),
    ("scripts/gpu_bundle.sh", "builds every GPU test binary: many minutes"),
    ("scripts/gpu_check.sh", "needs an NVIDIA GPU"),
    ("scripts/reference/bench_torch_gpu.py", "needs an NVIDIA GPU and PyTorch"),
    ("scripts/bench_gpu_table.py", "reads the JSON files of a GPU check"),
    ("scripts/compare_metrics.py", "reads the run directories of a GPU check"),
    ("BF16=1 scripts/bench_gemm_vs_numpy.sh 3", "needs PyTorch; minutes of GEMM timing"),
    ("scripts/bench_cpu_vs_torch.sh [ROUNDS]", "needs PyTorch; trains cola-60m and cola-350m: an hour"),
    (
        "ROWS=cola-60m:8:8 STEPS=4 scripts/bench_cpu_vs_torch.sh 1",
        "needs PyTorch; six cola-60m runs and torch.compile: about 4 minutes",
    ),
    (
        "BIN=target/release/examples/llama_cola_350m ROWS=cola-60m:8:8 STEPS=4 scripts/bench_cpu_vs_torch.sh 2",
        "needs PyTorch and a built training program; twelve cola-60m runs and torch.compile: about 5 minutes",
    ),
    ("scripts/reference/bench_torch_gpu.py --device cpu", "needs PyTorch"),
    (
        "MODEL=cola-60m BATCH=8 STEPS=4 POLICIES=none PRECISION=bf16-mixed scripts/bench_cpu_step.sh OLD NEW 1",
        "two builds of the training program; minutes of training",
    ),
    (
        "cargo run --release --example llama_cola_350m -- --model cola-60m --lowrank-act silu \
         --data 'c4/en/c4-train.*-of-01024.json.gz' --tokenizer t5/tokenizer.json --batch-size 512 \
         --steps 10000 --out runs/activation-60m-silu",
        "needs the C4 corpus and the T5 tokenizer; a GPU run at paper scale",
    ),
    (
        "cargo run --release --example llama_cola_350m -- --model full-60m --data ... --batch-size 512 \
         --steps 10000 --out runs/activation-60m-full",
        "a GPU run at paper scale on C4 (`...` stands for the corpus)",
    ),
    (
        "cargo run --release --example audit_doc > docs/AUDIT.md",
        "tests/suite/audit_doc.rs runs it and compares its output with the page",
    ),
    (
        "cargo run --release --example experiments -- activation",
        "the default budget: about an hour (tests/suite/experiments.rs runs the grids with --quick)",
    ),
    (
        "cargo run --release --example experiments -- rank [--quick] [--out runs/rank] [--budget-minutes 3] \
         [--seeds 2]",
        "the default budget, two seeds: about an hour (tests/suite/experiments.rs runs the grids with --quick)",
    ),
    (
        "cargo run --release --example llama_cola_350m -- --model cola-60m --precision f32 --steps 300 \
         --warmup 30 --eval-every 30 --eval-tokens 13770 --save-every 50 --keep-every 50 --seed 0 --out DIR",
        "300 steps of cola-60m: 40 minutes on a 2-core CPU",
    ),
    (
        "cargo run --release --example llama_cola_350m -- --model cola-small --precision f32 --steps 430 \
         --warmup 43 --eval-every 43 --eval-tokens 16384 --save-every 50 --keep-every 50 --seed 0 --out DIR",
        "430 steps of cola-small: minutes on a 2-core CPU",
    ),
    ("scripts/reference/attention_probe.py", "needs PyTorch and a checkpoint"),
    (
        "cargo run --release --example experiments -- precision --threads 2 --seeds 2 --lr 1e-3",
        "six runs of cola-60m for 300 steps: two to three hours on a 2-core CPU",
    ),
    (
        "cargo run --release --example experiments -- precision --threads 2",
        "six runs of cola-60m for 300 steps: hours on a 2-core CPU (tests/suite/experiments.rs runs it with --quick)",
    ),
];

/// The flags that make a training command small, replacing the page's values or added to them.
const SMALL: &[(&str, &str)] = &[
    ("--model", "cola-tiny"),
    ("--steps", "2"),
    ("--vocab-size", "300"),
    ("--seq-len", "16"),
    ("--batch-size", "2"),
    ("--micro-batch", "2"),
    ("--threads", "1"),
];

/// The programs whose commands this test runs unless [`NOT_RUN`] lists them (`tour`: tests/suite/tour.rs).
const RUN: &[&str] = &["llama_cola_350m", "generate", "tour"];

/// The clap programs, whose flags are checked by parsing them.
const CLAP_PROGRAMS: &[&str] = &["llama_cola_350m", "generate", "prepare_data", "experiments"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, as (name, text).
fn pages() -> Vec<(String, String)> {
    let mut names = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| (n.display().to_string(), std::fs::read_to_string(root().join(&n)).unwrap()))
        .collect()
}

/// Whether `text` is a command this test knows about: `cargo run ...` or a path under `scripts/`, after
/// any `NAME=value` environment assignments.
fn is_command(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().skip_while(|w| is_assignment(w)).collect();
    match words.as_slice() {
        ["cargo", "run", ..] => true,
        [first, ..] => first.starts_with("scripts/") && !first.ends_with('/'),
        [] => false,
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The commands of one page, whitespace collapsed: code lines (fenced, or indented after a blank line;
/// `\` continues a line, `#` starts a comment) and inline code spans of the prose (a paragraph's lines
/// joined, so a span may cross a line break; each table row on its own).
fn commands(text: &str) -> Vec<String> {
    let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    let mut paragraph = String::new();
    let flush = |paragraph: &mut String, found: &mut Vec<String>| {
        for (i, span) in paragraph.split('`').enumerate() {
            if i % 2 == 1 && is_command(span) {
                found.push(normal(span));
            }
        }
        paragraph.clear();
    };
    let lines: Vec<&str> = text.lines().collect();
    let (mut fenced, mut at) = (false, 0);
    while at < lines.len() {
        let line = lines[at];
        at += 1;
        if line.trim_start().starts_with("```") {
            flush(&mut paragraph, &mut found);
            fenced = !fenced;
            continue;
        }
        let indented = line.starts_with("    ") && !line.trim().is_empty() && paragraph.is_empty();
        if fenced || indented {
            let mut code = line.trim().to_string();
            while code.ends_with('\\') && at < lines.len() {
                code.pop();
                code.push(' ');
                code.push_str(lines[at].trim());
                at += 1;
            }
            let code = strip_comment(&code);
            if is_command(code) {
                found.push(normal(code));
            }
        } else if line.trim().is_empty() || line.starts_with('#') || line.starts_with('|') {
            flush(&mut paragraph, &mut found);
            paragraph.push_str(line);
            flush(&mut paragraph, &mut found);
        } else {
            paragraph.push(' ');
            paragraph.push_str(line);
        }
    }
    flush(&mut paragraph, &mut found);
    found
}

/// `code` up to a `#` that starts a shell comment (outside quotes, after a space).
fn strip_comment(code: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in code.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous == ' ' => return code[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    code
}

/// Shell words: quotes removed, no expansion.
fn words(command: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (_, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// A command taken apart: environment assignments, then an example with its arguments or a script.
#[derive(Debug)]
enum Invocation {
    Example { name: String, args: Vec<String> },
    Script { env: Vec<String>, path: String, args: Vec<String> },
}

fn invocation(command: &str) -> Invocation {
    let all = words(command);
    let env: Vec<String> = all.iter().take_while(|w| is_assignment(w)).cloned().collect();
    let rest = &all[env.len()..];
    if rest[0] == "cargo" {
        let example = rest.iter().position(|w| w == "--example").expect("cargo run --example NAME");
        let args = match rest.iter().position(|w| w == "--") {
            Some(dash) => rest[dash + 1..].to_vec(),
            None => Vec::new(),
        };
        assert!(env.is_empty(), "{command}: environment assignments before cargo are not expected");
        return Invocation::Example { name: rest[example + 1].clone(), args };
    }
    Invocation::Script { env, path: rest[0].clone(), args: rest[1..].to_vec() }
}

/// Optional parts of a usage line (`[--size-mb 1024]`) taken as given.
fn unbracket(args: &[String]) -> Vec<String> {
    args.iter().map(|a| a.trim_start_matches('[').trim_end_matches(']').to_string()).collect()
}

/// The example binaries, built once (a no-op after `cargo test --release`, which builds the examples).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--release"]).current_dir(root());
        for program in CLAP_PROGRAMS {
            build.args(["--example", program]);
        }
        assert!(build.status().expect("cargo runs").success(), "building the examples failed");
    });
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("examples").join(name)
}

fn run(program: &Path, args: &[String]) -> Output {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{} {}: {}\n{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Checks the flags of `command` against its program (see the module docs).
fn check_flags(command: &str) {
    match invocation(command) {
        Invocation::Example { name, .. } if name == "tour" => {}
        Invocation::Example { name, args } if CLAP_PROGRAMS.contains(&name.as_str()) => {
            let mut args = unbracket(&args);
            args.push("--help".into());
            let output = run(&example(&name), &args);
            assert!(String::from_utf8_lossy(&output.stdout).contains("Usage:"), "{command}: no help printed");
        }
        Invocation::Example { name, args } => {
            let file = root().join("examples").join(format!("{name}.rs"));
            let source = if file.exists() {
                std::fs::read_to_string(file).unwrap()
            } else {
                let dir = root().join("examples").join(&name);
                let files =
                    std::fs::read_dir(&dir).unwrap_or_else(|_| panic!("{command}: no example {name}"));
                files.map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap()).collect()
            };
            for flag in unbracket(&args).iter().filter(|a| a.starts_with("--")) {
                assert!(
                    source.contains(&format!("\"{flag}\"")),
                    "{command}: example {name} has no flag {flag}"
                );
            }
        }
        Invocation::Script { env, path, args } => {
            let source = std::fs::read_to_string(root().join(&path))
                .unwrap_or_else(|_| panic!("{command}: no script {path}"));
            let names = env.iter().map(|e| e.split('=').next().unwrap().to_string());
            for flag in unbracket(&args).into_iter().filter(|a| a.starts_with("--")).chain(names) {
                let mentioned = source.match_indices(&flag).any(|(at, _)| {
                    let next = source[at + flag.len()..].chars().next();
                    !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
                assert!(mentioned, "{command}: {path} does not mention {flag}");
            }
        }
    }
}

/// `args` with every [`SMALL`] flag's value replaced or the flag added, and the run's own paths.
fn small(args: &[String], dir: &TempDir, out: &str) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let extra = [("--data", path("corpus.txt")), ("--cache-dir", path("cache")), ("--out", path(out))];
    let mut args = args.to_vec();
    let replacements = SMALL.iter().map(|&(f, v)| (f, v.to_string())).chain(extra);
    for (flag, value) in replacements {
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value,
            None => args.extend([flag.to_string(), value]),
        }
    }
    args
}

fn write_corpus(dir: &TempDir) {
    let sentences = [
        "the cat sat on the mat.",
        "a dog ran to the red house.",
        "birds sing in the tall tree.",
        "ROMEO: hello.",
    ];
    let text: Vec<&str> = (0..400usize).map(|i| sentences[(i * 7 + i / 3) % 4]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
}

/// The rows of a printed profile: `(direction, family)` to the numbers of the row.
fn profile_rows(lines: &[&str]) -> Vec<(String, String, Vec<f64>)> {
    let directions = ["forward", "backward", "recompute", "optimizer", "other"];
    lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (&direction, &family) = (fields.first()?, fields.get(1)?);
            directions.contains(&direction).then(|| {
                let numbers = fields[2..].iter().map(|f| f.trim_end_matches('%').parse().unwrap()).collect();
                (direction.to_string(), family.to_string(), numbers)
            })
        })
        .collect()
}

/// The README's profile sample: the indented block that starts with `profile of`.
fn readme_profile_sample(readme: &str) -> Vec<&str> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("    profile of ")).expect("README shows a profile");
    lines[start..].iter().take_while(|l| l.starts_with("    ")).map(|l| &l[4..]).collect()
}

/// The sample shows the rows the program prints, and its columns add up to its totals.
fn check_profile_sample(readme: &str, printed: &str) {
    let sample = readme_profile_sample(readme);
    let printed: Vec<&str> = printed.lines().skip_while(|l| !l.starts_with("profile of")).collect();
    assert_eq!(sample[2], printed[2], "the sample's column header is not the one printed now");
    let host_line = |lines: &[&str]| lines.iter().any(|l| l.starts_with("host memory per step: "));
    assert!(host_line(&printed), "the program prints its host-memory line");
    assert!(host_line(&sample), "the sample shows the host-memory line the program prints");
    let names = |rows: &[(String, String, Vec<f64>)]| -> BTreeSet<(String, String)> {
        rows.iter().map(|(d, f, _)| (d.clone(), f.clone())).collect()
    };
    let rows = profile_rows(&sample);
    let now = profile_rows(&printed);
    assert_eq!(rows.len(), names(&rows).len(), "a row shown twice");
    let (shown, current) = (names(&rows), names(&now));
    assert_eq!(
        shown,
        current,
        "rows only in the README: {:?}; rows only printed now: {:?}",
        shown.difference(&current).collect::<Vec<_>>(),
        current.difference(&shown).collect::<Vec<_>>()
    );
    // Columns: calls, ms, share %, GFLOP, GFLOP/s; rows sorted by time, `other` last.
    let total: Vec<f64> = sample
        .iter()
        .find_map(|l| l.strip_prefix("total"))
        .expect("a total line")
        .split_whitespace()
        .map(|f| f.trim_end_matches('%').parse().unwrap())
        .collect();
    let (total_ms, total_share, total_gflop) = (total[0], total[1], total[2]);
    let n = rows.len() as f64;
    let sum = |column: usize| rows.iter().map(|(_, _, v)| v[column]).sum::<f64>();
    // Each printed figure is rounded to its last digit: half a unit of it per row at most.
    assert!((sum(1) - total_ms).abs() <= 0.005 * n + 0.005, "ms: {} vs total {total_ms}", sum(1));
    assert!((sum(2) - total_share).abs() <= 0.05 * n, "shares: {} vs {total_share}", sum(2));
    assert!((total_share - 100.0).abs() < 0.05, "the shares sum to 100%");
    assert!((sum(3) - total_gflop).abs() <= 0.0005 * n + 0.0005, "GFLOP: {} vs {total_gflop}", sum(3));
    for (direction, family, v) in &rows {
        let (ms, share, gflop, rate) = (v[1], v[2], v[3], v[4]);
        assert!((share - 100.0 * ms / total_ms).abs() <= 0.051, "{direction} {family}: share {share}");
        if gflop >= 1.0 {
            let expected = gflop / (ms / 1e3);
            assert!((rate - expected).abs() <= 0.01 * expected, "{direction} {family}: {rate} GFLOP/s");
        }
    }
    let timed: Vec<f64> = rows.iter().filter(|(d, _, _)| d != "other").map(|(_, _, v)| v[1]).collect();
    assert!(timed.windows(2).all(|w| w[0] >= w[1]), "rows sorted by time");
    assert_eq!(rows.last().map(|(d, _, _)| d.as_str()), Some("other"), "`other` comes last");
}

#[test]
fn every_documented_command_is_run_or_listed_and_its_flags_parse() {
    let pages = pages();
    let readme = &pages[0].1;
    let mut seen = BTreeSet::new();
    let mut to_run = Vec::new();
    for (page, text) in &pages {
        for command in commands(text) {
            if !seen.insert(command.clone()) {
                continue;
            }
            let listed = NOT_RUN.iter().any(|(c, _)| words(c) == words(&command));
            let runnable = !listed
                && matches!(invocation(&command), Invocation::Example { ref name, .. } if RUN.contains(&name.as_str()));
            assert!(
                listed || runnable,
                "{page}: `{command}` is neither run by this test nor listed in NOT_RUN with a reason"
            );
            check_flags(&command);
            if runnable {
                to_run.push(command);
            }
        }
    }
    for (command, _) in NOT_RUN {
        let normal = words(command);
        assert!(seen.iter().any(|c| words(c) == normal), "NOT_RUN lists `{command}`, which no page shows");
    }
    let quick = format!("cargo run --release --example llama_cola_350m -- {QUICK_START_FLAGS}");
    assert!(seen.contains(&quick), "README's quick start is not `{quick}` (long_run_hint prints it)");

    let dir = TempDir::new("docs-commands");
    write_corpus(&dir);
    let trainer = example("llama_cola_350m");
    let mut checkpoint = None;
    let mut profiled = false;
    for (i, command) in to_run.iter().enumerate() {
        let Invocation::Example { name, args } = invocation(command) else { unreachable!() };
        match name.as_str() {
            "tour" => {} // tests/suite/tour.rs runs every stop of docs/TOUR.md and checks its output
            "llama_cola_350m" if args.iter().any(|a| a == "--help") => {
                let output = run(&trainer, &args);
                assert!(String::from_utf8_lossy(&output.stdout).contains("--model"), "{command}");
            }
            "llama_cola_350m" => {
                let out = format!("run-{i}");
                let output = run(&trainer, &small(&args, &dir, &out));
                let (stdout, stderr) =
                    (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
                if args.iter().any(|a| a == "--profile") {
                    check_profile_sample(readme, &stdout);
                    profiled = true;
                } else if args.iter().any(|a| a == "--audit") {
                    assert!(stdout.contains("cola-tiny"), "{command}: {stdout}");
                } else {
                    assert!(stderr.contains("done at step 2/2"), "{command}: {stderr}");
                    let metrics = std::fs::read_to_string(dir.join(&out).join("metrics.jsonl")).unwrap();
                    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 2, "{metrics}");
                    checkpoint = Some(dir.join(&out));
                }
            }
            "generate" => {
                let run_dir = checkpoint.as_ref().expect("a training command runs before generate");
                let args: Vec<String> = args
                    .iter()
                    .map(|a| if a == "DIR" { run_dir.display().to_string() } else { a.clone() })
                    .chain(["--threads".into(), "1".into()])
                    .collect();
                let output = run(&example("generate"), &args);
                assert!(!output.stdout.is_empty(), "{command}: nothing generated");
            }
            _ => unreachable!(),
        }
    }
    assert!(profiled, "README.md shows no `--profile` command, so its sample is unchecked");
}
