//! The latency-by-percentile PNG: x is the percentile on the usual HdrHistogram scale
//! (`1/(1-p)`, log: 0%, 90%, 99%, 99.9%, ...), y the latency in ms, one line per histogram.
//!
//! Text needs a font: plotters' `ab_glyph` backend takes font bytes, which are read from
//! the system's DejaVu Sans (`fonts-dejavu-core`, or `KASAGI_BENCH_FONT`). Without a font
//! the plot is drawn without any text rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font once per process; whether text can be drawn.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("KASAGI_BENCH_FONT")
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| (*p).to_owned()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps the bytes for the process's life.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// The highest `1/(1-p)` shown: 99.999%.
const MAX_X: f64 = 1e5;

pub fn latency_by_percentile(
    path: &Path,
    title: &str,
    curves: &[(&str, &Histogram<u64>)],
) -> Result<()> {
    let text = font_ready();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let max_ms = curves
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(0.001, f64::max)
        * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d((1f64..MAX_X).log_scale(), 0f64..max_ms)
        .map_err(|e| anyhow!("plot: {e}"))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| percentile_label(*x));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| anyhow!("plot: {e}"))?;
    for (i, (name, hist)) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = hist
            .iter_quantiles(5)
            .map(|v| {
                let q = v.quantile_iterated_to();
                let x = if q >= 1.0 {
                    MAX_X
                } else {
                    (1.0 / (1.0 - q)).min(MAX_X)
                };
                (x, v.value_iterated_to() as f64 / 1000.0)
            })
            .collect();
        let series = chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?;
        if text {
            let label = (*name).to_owned();
            series
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 0.5 {
        "0%".into()
    } else {
        let digits = (x.log10().round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}
