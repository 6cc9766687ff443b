//! The experiment runner end to end with `--quick` (tiny models, 24 steps of 4 x 16 tokens, a 300-entry
//! BPE of a small test corpus): the table and the plot are written, every number of the table is the
//! mean (or spread) of the per-run `result.json` files, a second invocation trains nothing,
//! the runs are kept in a store that another grid reuses (under the same settings only), and CoLA-M's
//! losses equal plain CoLA's bit for bit (the retention policy changes memory, never numbers); the
//! precision grid trains one model in f32, bf16-mixed and pure-bf16 under keys that leave f32 runs' keys
//! as they were; `--lr` runs at its own peak rate in runs of their own. About 15 s on 2 cores.
use crate::common;

use cola::experiments::runner::run_dir;
use cola::experiments::{self, mean_std, Experiment, RunResult, Settings, RESULT_FILE};
use cola::train::DeviceChoice;
use common::training::{write_corpus, VOCAB};
use common::TempDir;
use std::path::Path;

fn quick(dir: &TempDir, experiment: Experiment, seeds: u64) -> Settings {
    let mut settings = Settings::new(experiment, true, dir.join(experiment.name()), None, seeds);
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

/// The precision grid trains one model three ways, f32 first (the paired column is "minus f32"): its rows
/// differ in precision only, their run keys are distinct, and the f32 row's key is the model's key of
/// every other grid (f32 runs of a store stay valid). Its default budget is 300 steps of 8 x 256 tokens,
/// the other grids' is unchanged. Then `--quick` end to end: each row trains 24 steps in its precision,
/// records it, shows its flag in the table, and lands within 0.05 nats of f32's final loss: 24 steps of
/// cola-tiny from the same seed, where bf16's rounding (8 bits of mantissa) moved it by 0.0002
/// (bf16-mixed) and 0.010 (pure-bf16, whose updates are rounded too) when this was written; a bf16 path
/// that ignored the precision would give f32's curve (checked below), a broken one a far larger gap.
#[test]
fn precision_grid_varies_precision_only_and_runs_quick() {
    use cola::train::Precision;
    let full = experiments::grid(Experiment::Precision, false);
    let labels: Vec<&str> = full.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["cola-60m-f32", "cola-60m-bf16-mixed", "cola-60m-pure-bf16"]);
    assert_eq!(full.iter().map(|s| s.precision).collect::<Vec<_>>(), Precision::ALL);
    for spec in &full[1..] {
        assert_eq!(
            (spec.preset, spec.variant, spec.policy),
            (full[0].preset, full[0].variant, full[0].policy)
        );
    }
    let keys: Vec<String> = full.iter().map(|s| s.key()).collect();
    assert_eq!(
        keys,
        [
            "cola-60m-silu-r128-gated",
            "cola-60m-silu-r128-gated-bf16-mixed",
            "cola-60m-silu-r128-gated-pure-bf16"
        ]
    );
    // The f32 keys of the other grids are what they were before runs had a precision.
    assert_eq!(experiments::grid(Experiment::Colam, false)[1].key(), "cola-small-silu-r64-gated-cola-m");
    assert_eq!(experiments::grid(Experiment::Compute, false)[2].key(), "full-small-2l");
    let budget = |e: Experiment| Settings::new(e, false, "unused".into(), None, 1).tokens;
    assert_eq!(budget(Experiment::Precision), 300 * 8 * 256);
    assert_eq!(budget(Experiment::Activation), 878_760);

    let dir = TempDir::new("experiments-precision");
    write_corpus(&dir);
    let settings = quick(&dir, Experiment::Precision, 1);
    let report = experiments::run(&settings).unwrap();
    assert_eq!((report.trained, report.skipped), (3, 0));
    let table = std::fs::read_to_string(&report.table).unwrap();
    let f32_loss = report.rows[0].runs[0].final_val_loss;
    for (row, precision) in report.rows.iter().zip(Precision::ALL) {
        let run = &row.runs[0];
        assert_eq!(run.precision, precision.name(), "{}", row.label);
        let recorded = read_result(&run_dir(&settings, &grid_spec(&row.label), 0).join(RESULT_FILE));
        assert_eq!(recorded.precision, precision.name(), "result.json records it");
        assert_eq!(run.steps, 24);
        assert!(
            (run.final_val_loss - f32_loss).abs() < 0.05,
            "{}: {} vs f32 {f32_loss}",
            row.label,
            run.final_val_loss
        );
        let flags = &table_row(&table, &row.label)[1];
        assert_eq!(
            flags.contains(&format!("--precision {precision}")),
            precision != Precision::F32,
            "{flags}"
        );
    }
    assert_ne!(report.rows[1].runs[0].val_curve, report.rows[0].runs[0].val_curve, "bf16 changes numbers");
    assert_ne!(report.rows[2].runs[0].val_curve, report.rows[1].runs[0].val_curve, "bf16 moments do too");
    // Pure bf16 holds everything in half the bytes of f32 (bf16-mixed adds f32 master weights and moments
    // to its bf16 weights, so it need not be smaller at this size).
    assert!(report.rows[2].runs[0].peak_bytes < report.rows[0].runs[0].peak_bytes);
}

/// The `--quick` precision grid's row `label`.
fn grid_spec(label: &str) -> experiments::RunSpec {
    experiments::grid(Experiment::Precision, true).into_iter().find(|s| s.label == label).unwrap()
}

/// `--lr` (`Settings::lr`) trains every run at the given peak learning rate, and such a run is another
/// run than the preset's: its own directory (named with the rate), never reused for the preset's rate.
/// The schedule peaks at the end of the warmup, so the largest logged rate is the peak exactly.
#[test]
fn lr_override_sets_the_peak_and_keeps_its_runs_apart() {
    use cola::experiments::runner::run_one;
    use cola::train::{StepRecord, METRICS_FILE};
    let dir = TempDir::new("experiments-lr");
    write_corpus(&dir);
    let spec = grid_spec("cola-tiny-f32");
    let preset_peak = spec.preset.recipe().peak_lr;
    let lr = preset_peak / 7.0;
    let mut settings = quick(&dir, Experiment::Precision, 1);
    let plain_dir = run_dir(&settings, &spec, 0);
    settings.lr = Some(lr);
    let lr_dir = run_dir(&settings, &spec, 0);
    assert_ne!(lr_dir, plain_dir);
    assert!(lr_dir.to_string_lossy().contains(&format!("-lr{lr:e}-")), "{}", lr_dir.display());

    let (_, reused) = run_one(&spec, 0, &settings).unwrap();
    assert!(!reused);
    let metrics = std::fs::read_to_string(lr_dir.join(METRICS_FILE)).unwrap();
    let peak = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<StepRecord>(l).ok())
        .map(|r| r.lr)
        .fold(0.0, f64::max);
    assert_eq!(peak, lr);
    assert!(!plain_dir.exists(), "the preset's run is not trained, nor taken for this one");
    assert!(run_one(&spec, 0, &settings).unwrap().1, "a second call reads the finished run back");
}
