//! The experiment runner end to end with `--quick` (tiny models, 24 steps of 4 x 16 tokens, a 300-entry
//! BPE of a small test corpus): the table and the plot are written, every number of the table is the
//! mean (or spread) of the per-run `result.json` files, a second invocation trains nothing,
//! the runs are kept in a store that another grid reuses (under the same settings only), and CoLA-M's
//! losses equal plain CoLA's bit for bit (the retention policy changes memory, never numbers). About 10 s
//! on 2 cores.
mod common;

use cola::experiments::runner::run_dir;
use cola::experiments::{self, mean_std, Experiment, RunResult, Settings, RESULT_FILE};
use cola::train::DeviceChoice;
use common::training::{write_corpus, VOCAB};
use common::TempDir;
use std::path::Path;

fn quick(dir: &TempDir, experiment: Experiment, seeds: u64) -> Settings {
    let mut settings = Settings::new(experiment, true, dir.join(experiment.name()), 0.0, seeds);
    settings.data = Some(dir.join("corpus.txt"));
    settings.cache_dir = Some(dir.join("cache"));
    settings.vocab_size = Some(VOCAB);
    settings.device = DeviceChoice::Cpu;
    settings
}

fn read_result(path: &Path) -> RunResult {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The table's cells of the row whose first cell is `label`.
fn table_row(table: &str, label: &str) -> Vec<String> {
    let line =
        table.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("{label}"));
    line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn quick_activation_grid_writes_a_table_that_matches_its_runs_and_resumes() {
    let dir = TempDir::new("experiments-activation");
    write_corpus(&dir);
    let settings = quick(&dir, Experiment::Activation, 2);
    let report = experiments::run(&settings).unwrap();
    assert_eq!((report.trained, report.skipped), (10, 0));
    let table = std::fs::read_to_string(&report.table).unwrap();
    assert!(std::fs::metadata(&report.plot).unwrap().len() > 1000, "loss.png is written");
    let labels = ["full-tiny", "cola-tiny-silu", "cola-tiny-gelu", "cola-tiny-relu", "cola-tiny-identity"];
    let specs = experiments::grid(Experiment::Activation, true);
    assert_eq!(specs.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), labels);
    for spec in &specs {
        let label = spec.label.as_str();
        let runs: Vec<RunResult> =
            (0..2).map(|seed| read_result(&run_dir(&settings, spec, seed).join(RESULT_FILE))).collect();
        assert!(runs.iter().all(|r| r.final_val_loss.is_finite() && r.steps == 24), "{label}");
        assert_ne!(runs[0].final_val_loss, runs[1].final_val_loss, "{label}: seeds differ");
        let row = table_row(&table, label);
        let (loss, loss_sd) = mean_std(&runs.iter().map(|r| r.final_val_loss).collect::<Vec<_>>());
        assert_eq!(row[3], format!("{loss:.4} ± {loss_sd:.4}"), "{label}");
        let (ppl, ppl_sd) = mean_std(&runs.iter().map(|r| r.final_val_ppl).collect::<Vec<_>>());
        assert_eq!(row[4], format!("{ppl:.2} ± {ppl_sd:.2}"), "{label}");
        assert_eq!(row[5], runs[0].params_total.to_string(), "{label}");
        assert_eq!(row[6], runs[0].params_low_rank.to_string(), "{label}");
        // The last column: this row's loss minus full rank's, seed by seed.
        let full: Vec<RunResult> =
            (0..2).map(|seed| read_result(&run_dir(&settings, &specs[0], seed).join(RESULT_FILE))).collect();
        let deltas: Vec<f64> =
            runs.iter().zip(&full).map(|(r, f)| r.final_val_loss - f.final_val_loss).collect();
        let (delta, delta_sd) = mean_std(&deltas);
        let expected = if label == "full-tiny" {
            "(reference)".to_string()
        } else {
            format!("{delta:+.4} ± {delta_sd:.4}")
        };
        assert_eq!(row[11], expected, "{label}");
    }
    // Every activation has the same parameters; only full rank differs.
    let params = |label: &str| table_row(&table, label)[5].clone();
    assert_eq!(params("cola-tiny-identity"), params("cola-tiny-silu"));
    assert_ne!(params("full-tiny"), params("cola-tiny-silu"));
    assert!(table_row(&table, "cola-tiny-identity")[1].contains("--lowrank-act identity"));

    let again = experiments::run(&settings).unwrap();
    assert_eq!((again.trained, again.skipped), (0, 10));
    assert_eq!(std::fs::read_to_string(&again.table).unwrap(), table);

    // Another grid given the same store trains only what is new to it: --quick's compute grid is
    // cola-tiny (= cola-tiny-silu above) and full-tiny, both finished.
    let mut compute = quick(&dir, Experiment::Compute, 2);
    compute.runs = settings.runs.clone();
    let shared = experiments::run(&compute).unwrap();
    assert_eq!((shared.trained, shared.skipped), (0, 4));
    assert_eq!(shared.rows[0].runs[0].final_val_loss, table_row_loss(&report, "cola-tiny-silu"));
    // ... but not under other settings: a run is reused only where it was trained the same way.
    compute.eval_tokens *= 2;
    let err = experiments::run(&compute).unwrap_err().to_string();
    assert!(err.contains("validation tokens") && err.contains("--runs"), "{err}");
}

/// Seed 0's final validation loss of the report's row `label`.
fn table_row_loss(report: &experiments::Report, label: &str) -> f64 {
    report.rows.iter().find(|r| r.label == label).unwrap().runs[0].final_val_loss
}

#[test]
fn quick_colam_losses_equal_plain_cola() {
    let dir = TempDir::new("experiments-colam");
    write_corpus(&dir);
    let report = experiments::run(&quick(&dir, Experiment::Colam, 1)).unwrap();
    let [plain, cola_m] = &report.rows[..] else { panic!("two rows: {:?}", report.rows) };
    assert_eq!(cola_m.runs[0].policy, "cola-m");
    assert_eq!(plain.runs[0].val_curve.len(), 12, "every 2 of 24 steps");
    assert_eq!(plain.runs[0].val_curve, cola_m.runs[0].val_curve, "CoLA-M changes no loss");
    assert!(cola_m.runs[0].peak_bytes <= plain.runs[0].peak_bytes, "CoLA-M keeps less");
}

/// The compute grid's full-rank model costs within 2% of cola-small's training FLOPs per token (audit's
/// formula, docs/METHOD.md section 8), and full-small about 1.5x: the grid compares equal compute.
#[test]
fn compute_grid_matches_training_flops() {
    let flops = |name: &str| {
        cola::audit::sizes(name.parse().unwrap(), &cola::nn::Variant::NONE, 8192, 8, 256)
            .unwrap()
            .training_flops_per_token
    };
    let grid = experiments::grid(Experiment::Compute, false);
    let names: Vec<&str> = grid.iter().map(|s| s.preset.name()).collect();
    assert_eq!(names, ["cola-small", "full-small", "full-small-2l"]);
    let (cola, full, matched) = (flops("cola-small"), flops("full-small"), flops("full-small-2l"));
    assert!((matched / cola - 1.0).abs() < 0.02, "{matched} vs {cola}");
    assert!(full / cola > 1.45, "{full} vs {cola}");
}
