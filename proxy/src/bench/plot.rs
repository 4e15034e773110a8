//! SVG line charts of scaling curves: a line through the medians per series, and a thin
//! bar from min to max at each point, so a reader sees the spread the table reports.

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::Stat;

pub struct Series {
    pub name: String,
    /// (x, figure at x).
    pub points: Vec<(f64, Stat)>,
}

/// One chart, x on a log scale (Service counts grow by decades).
pub fn lines(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1.max))
        .fold(0.0f64, f64::max);
    let (xmin, xmax) = if xmin.is_finite() && xmin > 0.0 {
        (xmin / 1.5, xmax * 1.5)
    } else {
        (1.0, 10.0)
    };
    let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {title:?}: {e}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut points = s.points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, st)| (*x, st.median)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|(x, st)| PathElement::new(vec![(*x, st.min), (*x, st.max)], color.stroke_width(1))),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_document() {
        let s = |v: f64| Stat::of(&[v * 0.9, v, v * 1.2]).expect("samples");
        let svg = lines(
            "t",
            "Services",
            "ns",
            &[Series {
                name: "a".into(),
                points: vec![(1000.0, s(10.0)), (10_000.0, s(12.0))],
            }],
        )
        .expect("drawn");
        assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("</svg>"));
    }
}
