//! SVG plots: the latency distribution (by percentile, on a "nines" scale) above the rates over
//! time.

use std::path::Path;

use plotters::{coord::types::RangedCoordf64, prelude::*};

use crate::report::Latency;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// x position of percentile `p` (0..100): 0 at 0 %, 1 at 90 %, 2 at 99 %, 3 at 99.9 %...
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

pub fn draw(
    path: &Path,
    title: &str,
    latencies: &[(&str, &Latency)],
    rates: &[(&str, Vec<f64>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(420);

    let max_ms = latencies
        .iter()
        .map(|(_, l)| l.max_ms())
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by percentile", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.0_f64, 0.0..max_ms)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(5)
        .x_label_formatter(&|x| {
            let labels = ["0%", "90%", "99%", "99.9%", "99.99%"];
            let i = labels
                .iter()
                .enumerate()
                .map(|(i, _)| i)
                .find(|i| (*x - f64::from(u8::try_from(*i).unwrap_or(0))).abs() < 0.5);
            labels[i.unwrap_or(4)].to_owned()
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    lines(
        &mut chart,
        latencies.iter().enumerate().map(|(i, (name, latency))| {
            let points = latency.curve().into_iter().map(|(p, ms)| (nines(p), ms));
            (*name, COLORS[i % COLORS.len()], points.collect())
        }),
    )?;

    #[allow(clippy::cast_precision_loss)]
    let seconds = rates.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(1) as f64;
    let max_rate = rates
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("rate over time", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..max_rate)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    lines(
        &mut chart,
        rates.iter().enumerate().map(|(i, (name, values))| {
            #[allow(clippy::cast_precision_loss)]
            let points = values.iter().enumerate().map(|(s, v)| (s as f64, *v));
            (*name, COLORS[(i + 2) % COLORS.len()], points.collect())
        }),
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws named lines with a legend.
fn lines<'a, 'b: 'a, 'n>(
    chart: &mut Chart<'a, 'b>,
    series: impl Iterator<Item = (&'n str, RGBColor, Vec<(f64, f64)>)>,
) -> anyhow::Result<()> {
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
