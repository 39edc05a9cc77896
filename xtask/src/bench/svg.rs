//! A line plot in hand-written SVG: panels side by side sharing an x axis quantity, each with
//! labelled axes, ticks and a legend. Enough for the scaling curve; no plotting dependency.

use std::fmt::Write as _;

pub(super) struct Series {
    pub(super) name: String,
    pub(super) colour: &'static str,
    /// (x, y) points, joined in this order.
    pub(super) points: Vec<(f64, f64)>,
}

pub(super) struct Panel {
    pub(super) title: String,
    pub(super) y_label: String,
    /// A logarithmic y axis (ticks at powers of ten), for figures spanning decades.
    pub(super) log_y: bool,
    pub(super) series: Vec<Series>,
}

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 320.0;
/// Plot area inside a panel: left (y tick labels and axis label), top (title), right, bottom.
const LEFT: f64 = 70.0;
const TOP: f64 = 58.0;
const RIGHT: f64 = 20.0;
const BOTTOM: f64 = 60.0;

/// A round axis maximum at or above `max` and its tick step (1, 2 or 5 times a power of ten).
fn axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

/// 0, step, 2 step, … up to `max`.
fn linear_ticks(max: f64, step: f64) -> Vec<f64> {
    let n = (max / step).round() as u32;
    (0..=n).map(|i| f64::from(i) * step).collect()
}

/// A panel's y axis: its range, its ticks, and where a value falls on it.
struct YAxis {
    log: bool,
    min: f64,
    max: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn new(panel: &Panel) -> Self {
        let ys = || {
            panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
        };
        let top = ys().fold(0.0, f64::max);
        if !panel.log_y {
            let (max, step) = axis(top);
            return Self {
                log: false,
                min: 0.0,
                max,
                ticks: linear_ticks(max, step),
            };
        }
        // From the decade at or below the least positive value to the one at or above the
        // greatest.
        let floor = ys()
            .filter(|y| *y > 0.0)
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let ceil = top.log10().ceil();
        let (lo, hi) = if floor.is_finite() && ceil > floor {
            (floor as i32, ceil as i32)
        } else {
            (0, 1)
        };
        Self {
            log: true,
            min: 10f64.powi(lo),
            max: 10f64.powi(hi),
            ticks: (lo..=hi).map(|e| 10f64.powi(e)).collect(),
        }
    }

    /// Where `y` falls, from 0 (bottom) to 1 (top).
    fn share(&self, y: f64) -> f64 {
        if self.log {
            (y.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            y / self.max
        }
    }
}

fn tick_label(v: f64) -> String {
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document: `panels` side by side, every x axis labelled `x_label`, the `caption` lines
/// below.
pub(super) fn plot(x_label: &str, panels: &[Panel], caption: &[String]) -> String {
    let width = PANEL_W * panels.len() as f64;
    let height = PANEL_H + 12.0 + 18.0 * caption.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    for (i, panel) in panels.iter().enumerate() {
        let x0 = PANEL_W * i as f64;
        draw_panel(&mut s, x0, x_label, panel);
    }
    for (i, line) in caption.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            width / 2.0,
            PANEL_H + 14.0 + 18.0 * i as f64,
            escape(line)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, x0: f64, x_label: &str, panel: &Panel) {
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (left, top) = (x0 + LEFT, TOP);
    let all = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x_max, x_step) = axis(all().map(|p| p.0).fold(0.0, f64::max));
    let y_axis = YAxis::new(panel);
    let px = |x: f64| left + x / x_max * pw;
    let py = |y: f64| top + ph - y_axis.share(y) * ph;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        escape(&panel.title)
    );
    // Grid and ticks.
    for y in y_axis.ticks.iter().copied() {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#e4e4e4"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            py(y),
            left + pw,
            left - 6.0,
            py(y) + 4.0,
            tick_label(y)
        );
    }
    for x in linear_ticks(x_max, x_step) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#e4e4e4"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            px(x),
            top + ph,
            top + ph + 16.0,
            tick_label(x)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r#"<polyline points="{left},{top} {left},{0} {1},{0}" fill="none" stroke="black"/>"#,
        top + ph,
        left + pw
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        top + ph + 36.0,
        escape(x_label)
    );
    let (lx, ly) = (x0 + 16.0, top + ph / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(&panel.y_label)
    );
    // The series, each with its entry in the legend: one row between the title and the plot,
    // where no point can hide it.
    for (i, series) in panel.series.iter().enumerate() {
        let points = &series.points;
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            series.colour
        );
        for (x, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                px(*x),
                py(*y),
                series.colour
            );
        }
        let (lx, ly) = (left + 150.0 * i as f64, top - 16.0);
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{3}" stroke-width="2"/><text x="{4:.1}" y="{5:.1}">{6}</text>"#,
            lx,
            ly,
            lx + 20.0,
            series.colour,
            lx + 26.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(axis(17_300.0), (20_000.0, 5000.0));
        assert_eq!(axis(430.0), (500.0, 100.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
        assert_eq!(tick_label(20_000.0), "20k");
    }

    #[test]
    fn plots_every_series() {
        let svg = plot(
            "deaths/s",
            &[Panel {
                title: "p99 <latency>".to_owned(),
                y_label: "µs".to_owned(),
                log_y: true,
                series: vec![Series {
                    name: "detector".to_owned(),
                    colour: "#c0392b",
                    points: vec![(1000.0, 50.0), (5000.0, 80.0)],
                }],
            }],
            &["caption".to_owned()],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("p99 &lt;latency&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        // A log axis from the decade below the least value to the one above the greatest.
        for tick in [">10<", ">100<"] {
            assert!(svg.contains(tick), "{tick}");
        }
        assert!(!svg.contains(">1000<"), "no decade beyond the data");
    }
}
