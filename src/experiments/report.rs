//! What an experiment writes: `results.md` (one row per model: validation loss and perplexity as mean and
//! spread over seeds, size, compute, throughput, memory) and `loss.png` (validation loss against tokens
//! and against training FLOPs, one line per run, one colour per model).
use super::runner::RunResult;
use super::ExperimentError;
use crate::audit::human_bytes;
use std::fmt::Write as _;
use std::path::Path;

/// One row of the table: the runs of one model, over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub label: String,
    pub runs: Vec<RunResult>,
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

impl Row {
    fn stat(&self, f: impl Fn(&RunResult) -> f64) -> (f64, f64) {
        mean_std(&self.runs.iter().map(f).collect::<Vec<_>>())
    }

    /// Final validation loss over the seeds.
    pub fn val_loss(&self) -> (f64, f64) {
        self.stat(|r| r.final_val_loss)
    }

    /// Final validation perplexity over the seeds.
    pub fn val_ppl(&self) -> (f64, f64) {
        self.stat(|r| r.final_val_ppl)
    }

    /// This row's final validation loss minus `reference`'s, seed by seed (same seed: same data order and
    /// validation tokens), then mean and spread over the seeds: the comparison with the between-seed noise
    /// of the data order taken out. `None` unless both rows ran the same seeds.
    pub fn paired_delta(&self, reference: &Row) -> Option<(f64, f64)> {
        let deltas: Option<Vec<f64>> = self
            .runs
            .iter()
            .map(|run| {
                let other = reference.runs.iter().find(|r| r.seed == run.seed)?;
                Some(run.final_val_loss - other.final_val_loss)
            })
            .collect();
        let deltas = deltas.filter(|d| !d.is_empty() && d.len() == reference.runs.len())?;
        Some(mean_std(&deltas))
    }
}

/// The Markdown table of `rows`, under a heading naming the experiment and its settings.
pub fn table(title: &str, rows: &[Row]) -> String {
    let mut out = format!("# {title}\n\n");
    out.push_str(
        "| model | flags | seeds | val loss (mean ± sd) | val ppl (mean ± sd) | params | low-rank params | \
         train GFLOP/token | tokens/s | s/step | peak memory | val loss - first row's, by seed |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let first = &row.runs[0];
        let (loss, loss_sd) = row.val_loss();
        let (ppl, ppl_sd) = row.val_ppl();
        let (tps, _) = row.stat(|r| r.tokens_per_s);
        let (sps, _) = row.stat(RunResult::seconds_per_step);
        let recompute = format!("--recompute {}", first.policy);
        let precision = format!("--precision {}", first.precision);
        let flags: Vec<&str> = [
            first.variant.as_str(),
            if first.policy == "none" { "" } else { &recompute },
            if first.precision == "f32" { "" } else { &precision },
        ]
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect();
        let flags = if flags.is_empty() { String::new() } else { format!("`{}`", flags.join(" ")) };
        let delta = match row.paired_delta(&rows[0]) {
            _ if std::ptr::eq(row, &rows[0]) => "(reference)".to_string(),
            Some((mean, sd)) => format!("{mean:+.4} ± {sd:.4}"),
            None => "seeds differ".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {flags} | {} | {loss:.4} ± {loss_sd:.4} | {ppl:.2} ± {ppl_sd:.2} | {} | {} | {:.4} | {tps:.0} | \
             {sps:.3} | {} | {delta} |",
            row.label,
            row.runs.len(),
            first.params_total,
            first.params_low_rank,
            first.training_flops_per_token / 1e9,
            human_bytes(first.peak_bytes as f64),
        );
    }
    out
}

/// Writes `loss.png`: validation loss against tokens (left) and training FLOPs (right).
pub fn plot(path: &Path, title: &str, rows: &[Row]) -> Result<(), ExperimentError> {
    draw(path, title, rows).map_err(|reason| ExperimentError::Plot { path: path.to_path_buf(), reason })
}

/// Ten distinguishable colours (matplotlib's tab10).
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The x coordinate of a run's curve point after `step` updates.
type XOf = fn(&RunResult, u64) -> f64;

fn draw(path: &Path, title: &str, rows: &[Row]) -> Result<(), String> {
    use plotters::prelude::*;
    let text = crate::train::metrics::font_available();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = if text { root.titled(title, ("sans-serif", 22)).map_err(|e| err(&e))? } else { root };
    let panels = root.split_evenly((1, 2));
    let losses = rows.iter().flat_map(|r| &r.runs).flat_map(|r| r.val_curve.iter().map(|p| p.1));
    let (low, high) =
        losses.filter(|l| l.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let (low, high) = if low <= high { (low, high) } else { (0.0, 1.0) };
    let margin = ((high - low) * 0.05).max(1e-3);
    // x of a curve point: tokens seen, or training FLOPs spent (tokens x FLOPs per token).
    let axes: [(&str, XOf); 2] = [
        ("tokens", |r, step| (step * r.tokens_per_step) as f64),
        ("training FLOPs", |r, step| (step * r.tokens_per_step) as f64 * r.training_flops_per_token),
    ];
    for (panel, (x_name, x_of)) in panels.iter().zip(axes) {
        let x_max = rows
            .iter()
            .flat_map(|row| &row.runs)
            .flat_map(|r| r.val_curve.iter().map(move |&(step, _)| x_of(r, step)))
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(panel);
        builder.margin(16);
        if text {
            builder.x_label_area_size(40).y_label_area_size(56);
        }
        let mut chart =
            builder.build_cartesian_2d(0.0..x_max, (low - margin)..(high + margin)).map_err(|e| err(&e))?;
        if text {
            chart
                .configure_mesh()
                .x_desc(x_name)
                .y_desc("validation loss (nats)")
                .x_label_formatter(&|x| format!("{x:.1e}"))
                .draw()
                .map_err(|e| err(&e))?;
        }
        for (i, row) in rows.iter().enumerate() {
            let (r, g, b) = COLOURS[i % COLOURS.len()];
            let colour = RGBColor(r, g, b);
            for (n, run) in row.runs.iter().enumerate() {
                let points: Vec<(f64, f64)> = run
                    .val_curve
                    .iter()
                    .filter(|p| p.1.is_finite())
                    .map(|&(s, l)| (x_of(run, s), l))
                    .collect();
                let series = chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(|e| err(&e))?;
                if text && n == 0 {
                    series
                        .label(row.label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
                }
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))
}
