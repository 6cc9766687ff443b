//! `metrics.jsonl` (one JSON object per optimizer step and per evaluation, flushed as written so that a
//! crash loses nothing logged) and `loss.png` (train and validation loss, redrawn at each evaluation).
//!
//! The plot draws with plotters' pure-Rust bitmap backend and, for text, a TTF read at run time through
//! ab_glyph (no fontconfig/freetype C libraries). Without a font it draws the curves without text; any
//! failure to plot is reported to the caller as a warning, never as a failed run.
use super::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const PLOT_FILE: &str = "loss.png";
/// Fonts tried for the plot's text, in order.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// One optimizer step. `step` counts updates done (the first line has step 1); `lr` is the rate that
/// update used; `tokens` is the cumulative count of non-pad input tokens; `tokens_per_s` is this step's
/// throughput (training time only); `elapsed_s` is the run's wall time, evaluations included.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// One evaluation after `step` updates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: f64,
    pub val_ppl: f64,
}

/// The open log of a run and the curves it has recorded (for the plot).
pub struct MetricsLog {
    path: PathBuf,
    plot_path: PathBuf,
    file: std::fs::File,
    pub train: Vec<StepRecord>,
    pub val: Vec<EvalRecord>,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A fresh run (`resume_step` `None`) starts it empty. A resumed run
    /// keeps the records up to its checkpoint's step and drops later ones (logged after the checkpoint
    /// by a run that then crashed), so the file reads as one uninterrupted run.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<MetricsLog> {
        let path = run_dir.join(METRICS_FILE);
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let mut kept = String::new();
        if let Some(step) = resume_step {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(TrainError::Io { path, source: e }),
            };
            for line in text.lines() {
                if let Ok(record) = serde_json::from_str::<EvalRecord>(line) {
                    if record.step <= step {
                        val.push(record);
                        kept += line;
                        kept.push('\n');
                    }
                } else if let Ok(record) = serde_json::from_str::<StepRecord>(line) {
                    if record.step <= step {
                        train.push(record);
                        kept += line;
                        kept.push('\n');
                    }
                }
            }
        }
        let temp = run_dir.join(format!(".{METRICS_FILE}.tmp-{}", std::process::id()));
        std::fs::write(&temp, kept).map_err(TrainError::io(&temp))?;
        std::fs::rename(&temp, &path).map_err(TrainError::io(&path))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(TrainError::io(&path))?;
        Ok(MetricsLog { path, plot_path: run_dir.join(PLOT_FILE), file, train, val })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn plot_path(&self) -> &Path {
        &self.plot_path
    }

    fn append(&mut self, record: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| TrainError::Config(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(TrainError::io(&self.path))
    }

    pub fn log_step(&mut self, record: StepRecord) -> Result<()> {
        self.append(&record)?;
        self.train.push(record);
        Ok(())
    }

    pub fn log_eval(&mut self, record: EvalRecord) -> Result<()> {
        self.append(&record)?;
        self.val.push(record);
        Ok(())
    }

    /// Redraws `loss.png` (written to a temp file, then renamed). Errors are for a warning only.
    pub fn plot(&self, title: &str) -> std::result::Result<(), String> {
        let temp = self.plot_path.with_file_name(format!(".loss.tmp-{}.png", std::process::id()));
        let drawn = draw(&temp, title, &self.train, &self.val);
        match drawn.and_then(|()| std::fs::rename(&temp, &self.plot_path).map_err(|e| e.to_string())) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(format!("could not draw {}: {e}", self.plot_path.display()))
            }
        }
    }
}

/// Registers the first font found as plotters' "sans-serif"; false when there is none.
pub(crate) fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|path| {
            let Ok(bytes) = std::fs::read(path) else { return false };
            // plotters keeps fonts for the life of the process; one small leak per process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok()
        })
    })
}

fn draw(
    path: &Path,
    title: &str,
    train: &[StepRecord],
    val: &[EvalRecord],
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let text = font_available();
    let points = train.iter().map(|r| (r.step, r.loss)).chain(val.iter().map(|r| (r.step, r.val_loss)));
    let finite: Vec<(u64, f64)> = points.filter(|(_, loss)| loss.is_finite()).collect();
    let max_step = finite.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let (low, high) = finite.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (low, high) = if low <= high { (low, high) } else { (0.0, 1.0) };
    let margin = ((high - low) * 0.05).max(1e-3);

    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(56);
    }
    let mut chart =
        builder.build_cartesian_2d(0u64..max_step, (low - margin)..(high + margin)).map_err(|e| err(&e))?;
    if text {
        chart.configure_mesh().x_desc("step").y_desc("loss (nats)").draw().map_err(|e| err(&e))?;
    }
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let train_line = train.iter().filter(|r| r.loss.is_finite()).map(|r| (r.step, r.loss));
    let series = chart.draw_series(LineSeries::new(train_line, blue.stroke_width(1))).map_err(|e| err(&e))?;
    if text {
        series.label("train").legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    }
    let val_line: Vec<(u64, f64)> =
        val.iter().filter(|r| r.val_loss.is_finite()).map(|r| (r.step, r.val_loss)).collect();
    let series =
        chart.draw_series(LineSeries::new(val_line.clone(), orange.stroke_width(2))).map_err(|e| err(&e))?;
    if text {
        series.label("validation").legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
    }
    chart.draw_series(val_line.iter().map(|&p| Circle::new(p, 3, orange.filled()))).map_err(|e| err(&e))?;
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}
