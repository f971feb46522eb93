//! A small, dependency-free SVG line-chart writer for the reproduction reports.
//!
//! The output is fully deterministic: the same [`Chart`] always renders to the same bytes.
//! Coordinates are written with two decimals, tick labels with a fixed number of decimals
//! derived from the tick step, series are drawn in the order given, and nothing depends on
//! the time, the environment or hash-map iteration order.
//!
//! Layout: an 800×480 px plot canvas (title on top, axis labels left and below) plus a legend
//! column on the right, sized to the longest series name. When a legend would not fit its
//! rows shrink; past about 29 series the canvas grows taller instead.
//!
//! Series are styled by index: one of 12 qualitative colours, combined with a dash pattern
//! (solid, dashed, dotted) and a marker shape (circle, square, triangle) that change every 12
//! series, so up to 36 series stay distinguishable.

use std::fmt::Write as _;

use anyhow::{Result, bail, ensure};

/// One line of a chart: a name for the legend and its points, drawn in the order given.
///
/// A point whose `x` or `y` is not finite (`NaN`, `±inf`) is a gap: it is skipped and the line
/// is broken there.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend entry (any text; it is XML-escaped).
    pub name: String,
    /// The `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced values; ticks at 1, 2 or 5 × 10^k steps.
    #[default]
    Linear,
    /// Evenly spaced powers of ten; ticks at decades. All values must be positive.
    Log10,
}

/// A line chart, rendered with [`Chart::to_svg`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chart {
    /// The title above the plot.
    pub title: String,
    /// The label below the x axis.
    pub x_label: String,
    /// The label left of the y axis.
    pub y_label: String,
    /// The scale of the x axis.
    pub x_scale: Scale,
    /// The scale of the y axis.
    pub y_scale: Scale,
    /// The x range shown, `(low, high)`; `None` takes the data's range, rounded outwards to
    /// nice values (tick steps for linear axes, decades for log axes). Data outside an explicit
    /// range is clipped.
    pub x_range: Option<(f64, f64)>,
    /// The y range shown, as `x_range`; an automatic y range also covers the `hlines`.
    pub y_range: Option<(f64, f64)>,
    /// The lines, drawn and listed in the legend in this order.
    pub series: Vec<Series>,
    /// Labelled horizontal reference lines `(y, label)`, e.g. `(0.99, "99%")`. A line outside
    /// an explicit y range is not drawn.
    pub hlines: Vec<(f64, String)>,
}

/// The width of the plot canvas, without the legend column.
const CANVAS_W: f64 = 800.0;
/// The least canvas height; it grows when a long legend needs more.
const MIN_H: f64 = 480.0;
/// Space left of the plot area: y tick labels and the y label.
const LEFT: f64 = 80.0;
/// Space between the plot area and the legend column.
const RIGHT: f64 = 20.0;
/// Space above the plot area: the title.
const TOP: f64 = 50.0;
/// Space below the plot area: x tick labels and the x label.
const BOTTOM: f64 = 60.0;
/// Space kept free below the legend.
const LEGEND_BOTTOM: f64 = 20.0;
/// Legend layout: left padding, sample-line length, gap to the text, right padding.
const LEGEND_PAD: f64 = 16.0;
const LEGEND_SAMPLE: f64 = 28.0;
const LEGEND_GAP: f64 = 8.0;
/// Legend names are sized for at least this many characters.
const LEGEND_MIN_CHARS: usize = 12;
/// A generous estimate of the average glyph width of a sans-serif font, in ems.
const GLYPH_EM: f64 = 0.6;
/// Legend rows: `(row height, font size)`, the first that fits is used.
const LEGEND_ROWS: [(f64, f64); 2] = [(18.0, 12.0), (14.0, 10.0)];
/// About how many intervals a linear axis is divided into.
const TARGET_INTERVALS: f64 = 5.0;
/// At most this many labelled decades on a log axis; more are thinned out.
const MAX_DECADES: i32 = 8;
/// Data is clipped this far outside the plot area, so that markers on its edge show whole.
const CLIP_SLACK: f64 = 4.0;
/// Pixel coordinates are clamped to ±this, so that far-off points stay short numbers.
const MAX_COORD: f64 = 1.0e6;

/// A 12-colour qualitative palette (Tableau-10-like, plus olive and charcoal).
const PALETTE: [&str; 12] = [
    "#4e79a7", // blue
    "#f28e2b", // orange
    "#e15759", // red
    "#76b7b2", // teal
    "#59a14f", // green
    "#edc948", // yellow
    "#b07aa1", // purple
    "#ff9da7", // pink
    "#9c755f", // brown
    "#bab0ac", // grey
    "#bcbd22", // olive
    "#333333", // charcoal
];

/// Dash patterns, one per palette cycle: solid, dashed, dotted.
const DASHES: [Option<&str>; 3] = [None, Some("7 4"), Some("1.5 3")];

/// An axis ready to draw: its scale, range and ticks.
struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
    /// Labelled ticks (with major grid lines).
    ticks: Vec<Tick>,
    /// Unlabelled minor grid lines (log axes only).
    minor: Vec<f64>,
}

/// A labelled tick.
#[derive(Clone, Debug, PartialEq)]
struct Tick {
    value: f64,
    label: String,
}

impl Axis {
    fn new(scale: Scale, (lo, hi): (f64, f64)) -> Axis {
        let (ticks, minor) = match scale {
            Scale::Linear => (linear_ticks(lo, hi), Vec::new()),
            Scale::Log10 => log_ticks(lo, hi),
        };
        Axis {
            scale,
            lo,
            hi,
            ticks,
            minor,
        }
    }

    /// Where `v` lies along the axis: 0 at `lo`, 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let t = |v: f64| match self.scale {
            Scale::Linear => v,
            Scale::Log10 => v.log10(),
        };
        (t(v) - t(self.lo)) / (t(self.hi) - t(self.lo))
    }

    /// Whether `v` is inside the axis range (with a little slack for rounding).
    fn contains(&self, v: f64) -> bool {
        let f = self.frac(v);
        (-1e-9..=1.0 + 1e-9).contains(&f)
    }
}

/// The plot area in pixels.
struct Frame {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl Frame {
    fn x(&self, axis: &Axis, v: f64) -> f64 {
        self.left + axis.frac(v) * (self.right - self.left)
    }

    fn y(&self, axis: &Axis, v: f64) -> f64 {
        self.bottom - axis.frac(v) * (self.bottom - self.top)
    }
}

impl Chart {
    /// Renders the chart as a standalone SVG document (ending in a newline).
    ///
    /// Fails when there are no series, a series has no finite point, a value, reference line
    /// or range bound on a log axis is not positive, an explicit range is not finite or not
    /// increasing, or a range is too wide or narrow for `f64` to tick (e.g. ±1e308).
    pub fn to_svg(&self) -> Result<String> {
        ensure!(
            !self.series.is_empty(),
            "chart {:?} has no series",
            self.title
        );
        for s in &self.series {
            let mut finite = s.points.iter().filter(|p| is_finite(**p)).peekable();
            ensure!(
                finite.peek().is_some(),
                "series {:?} has no finite points",
                s.name
            );
            for &(x, y) in finite {
                ensure!(
                    self.x_scale == Scale::Linear || x > 0.0,
                    "series {:?} has x = {x} on a log x axis",
                    s.name
                );
                ensure!(
                    self.y_scale == Scale::Linear || y > 0.0,
                    "series {:?} has y = {y} on a log y axis",
                    s.name
                );
            }
        }
        for (y, label) in &self.hlines {
            ensure!(y.is_finite(), "reference line {label:?} is at y = {y}");
            ensure!(
                self.y_scale == Scale::Linear || *y > 0.0,
                "reference line {label:?} is at y = {y} on a log y axis"
            );
        }

        let points = || self.series.iter().flat_map(|s| &s.points).copied();
        let xs = points().filter(|p| is_finite(*p)).map(|p| p.0);
        let x_range = axis_range("x", self.x_scale, self.x_range, xs)?;
        let ys = points().filter(|p| is_finite(*p)).map(|p| p.1);
        let ys = ys.chain(self.hlines.iter().map(|h| h.0));
        let y_range = axis_range("y", self.y_scale, self.y_range, ys)?;
        let x_axis = Axis::new(self.x_scale, x_range);
        let y_axis = Axis::new(self.y_scale, y_range);

        // The legend: the first row size that fits, else grow the canvas.
        let n = self.series.len() as f64;
        let room = MIN_H - TOP - LEGEND_BOTTOM;
        let (row_h, font) = LEGEND_ROWS
            .into_iter()
            .find(|(row_h, _)| n * row_h <= room)
            .unwrap_or(LEGEND_ROWS[LEGEND_ROWS.len() - 1]);
        let height = MIN_H.max((TOP + n * row_h + LEGEND_BOTTOM).ceil());
        let chars = self.series.iter().map(|s| s.name.chars().count()).max();
        let chars = chars.unwrap_or(0).max(LEGEND_MIN_CHARS) as f64;
        let text_w = (chars * GLYPH_EM * font).ceil();
        let legend_w = LEGEND_PAD + LEGEND_SAMPLE + LEGEND_GAP + text_w + LEGEND_PAD;
        let width = CANVAS_W + legend_w;

        let frame = Frame {
            left: LEFT,
            top: TOP,
            right: CANVAS_W - RIGHT,
            bottom: height - BOTTOM,
        };
        let mut out = String::new();
        let o = &mut out;
        writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#,
            w = num(width),
            h = num(height),
        )?;
        writeln!(
            o,
            r##"<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>"##,
            num(width),
            num(height)
        )?;
        writeln!(
            o,
            r#"<defs><clipPath id="plot-area"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>"#,
            num(frame.left - CLIP_SLACK),
            num(frame.top - CLIP_SLACK),
            num(frame.right - frame.left + 2.0 * CLIP_SLACK),
            num(frame.bottom - frame.top + 2.0 * CLIP_SLACK),
        )?;
        writeln!(
            o,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            num((frame.left + frame.right) / 2.0),
            escape(&self.title)
        )?;

        // Grid: minor lines, then major lines.
        writeln!(o, r##"<g stroke="#eeeeee" stroke-width="1">"##)?;
        for &v in &x_axis.minor {
            let x = num(frame.x(&x_axis, v));
            let (t, b) = (num(frame.top), num(frame.bottom));
            writeln!(o, r#"<line x1="{x}" y1="{t}" x2="{x}" y2="{b}"/>"#)?;
        }
        for &v in &y_axis.minor {
            let y = num(frame.y(&y_axis, v));
            let (l, r) = (num(frame.left), num(frame.right));
            writeln!(o, r#"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}"/>"#)?;
        }
        writeln!(o, "</g>")?;
        writeln!(o, r##"<g stroke="#d4d4d4" stroke-width="1">"##)?;
        for t in &x_axis.ticks {
            let x = num(frame.x(&x_axis, t.value));
            let (t, b) = (num(frame.top), num(frame.bottom));
            writeln!(o, r#"<line x1="{x}" y1="{t}" x2="{x}" y2="{b}"/>"#)?;
        }
        for t in &y_axis.ticks {
            let y = num(frame.y(&y_axis, t.value));
            let (l, r) = (num(frame.left), num(frame.right));
            writeln!(o, r#"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}"/>"#)?;
        }
        writeln!(o, "</g>")?;

        // Reference lines, under the data.
        let hlines: Vec<_> = self
            .hlines
            .iter()
            .filter(|(y, _)| y_axis.contains(*y))
            .collect();
        if !hlines.is_empty() {
            writeln!(
                o,
                r##"<g stroke="#666666" stroke-width="1" stroke-dasharray="4 4">"##
            )?;
            for (v, _) in &hlines {
                let y = num(frame.y(&y_axis, *v));
                let (l, r) = (num(frame.left), num(frame.right));
                writeln!(o, r#"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}"/>"#)?;
            }
            writeln!(o, "</g>")?;
        }

        // The data.
        writeln!(o, r#"<g clip-path="url(#plot-area)">"#)?;
        for (i, s) in self.series.iter().enumerate() {
            let style = Style::of(i);
            writeln!(o, r#"<g fill="{}" stroke="none">"#, style.colour)?;
            let mut run: Vec<(f64, f64)> = Vec::new();
            let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
            for &p in &s.points {
                if is_finite(p) {
                    run.push((frame.x(&x_axis, p.0), frame.y(&y_axis, p.1)));
                } else if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
            }
            if !run.is_empty() {
                runs.push(run);
            }
            for run in runs.iter().filter(|r| r.len() > 1) {
                let pts: Vec<String> = run
                    .iter()
                    .map(|&(x, y)| format!("{},{}", num(x), num(y)))
                    .collect();
                writeln!(
                    o,
                    r#"<polyline points="{}" fill="none" {}/>"#,
                    pts.join(" "),
                    style.stroke()
                )?;
            }
            for &(x, y) in runs.iter().flatten() {
                writeln!(o, "{}", style.marker(x, y))?;
            }
            writeln!(o, "</g>")?;
        }
        writeln!(o, "</g>")?;

        // Reference-line labels, above the data, right-aligned at their line.
        // Each is written twice: a white halo (for renderers without `paint-order`), then the text.
        if !hlines.is_empty() {
            writeln!(o, r#"<g font-size="11" text-anchor="end">"#)?;
            for (v, label) in &hlines {
                // Above the line, or below it where the line runs along the top of the frame.
                let y = frame.y(&y_axis, *v);
                let y = if y - frame.top < 16.0 {
                    y + 13.0
                } else {
                    y - 4.0
                };
                let (x, y) = (num(frame.right - 4.0), num(y));
                let label = escape(label);
                writeln!(
                    o,
                    r##"<text x="{x}" y="{y}" fill="#ffffff" stroke="#ffffff" stroke-width="3" stroke-linejoin="round">{label}</text>"##
                )?;
                writeln!(
                    o,
                    r##"<text x="{x}" y="{y}" fill="#444444">{label}</text>"##
                )?;
            }
            writeln!(o, "</g>")?;
        }

        // Axes: the frame, tick marks, tick labels, axis labels.
        writeln!(
            o,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333333" stroke-width="1"/>"##,
            num(frame.left),
            num(frame.top),
            num(frame.right - frame.left),
            num(frame.bottom - frame.top),
        )?;
        writeln!(o, r##"<g stroke="#333333" stroke-width="1">"##)?;
        for t in &x_axis.ticks {
            let x = num(frame.x(&x_axis, t.value));
            let (b, b5) = (num(frame.bottom), num(frame.bottom + 5.0));
            writeln!(o, r#"<line x1="{x}" y1="{b}" x2="{x}" y2="{b5}"/>"#)?;
        }
        for t in &y_axis.ticks {
            let y = num(frame.y(&y_axis, t.value));
            let (l, l5) = (num(frame.left - 5.0), num(frame.left));
            writeln!(o, r#"<line x1="{l}" y1="{y}" x2="{l5}" y2="{y}"/>"#)?;
        }
        writeln!(o, "</g>")?;
        writeln!(o, r##"<g font-size="11" fill="#333333">"##)?;
        for t in &x_axis.ticks {
            writeln!(
                o,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                num(frame.x(&x_axis, t.value)),
                num(frame.bottom + 18.0),
                escape(&t.label)
            )?;
        }
        for t in &y_axis.ticks {
            writeln!(
                o,
                r#"<text x="{}" y="{}" dy="0.35em" text-anchor="end">{}</text>"#,
                num(frame.left - 8.0),
                num(frame.y(&y_axis, t.value)),
                escape(&t.label)
            )?;
        }
        writeln!(o, "</g>")?;
        writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            num((frame.left + frame.right) / 2.0),
            num(frame.bottom + 42.0),
            escape(&self.x_label)
        )?;
        let (lx, ly) = (num(20.0), num((frame.top + frame.bottom) / 2.0));
        writeln!(
            o,
            r#"<text x="{lx}" y="{ly}" transform="rotate(-90 {lx} {ly})" text-anchor="middle" font-size="13">{}</text>"#,
            escape(&self.y_label)
        )?;

        // The legend.
        writeln!(o, r##"<g font-size="{}" fill="#222222">"##, num(font))?;
        let x0 = CANVAS_W + LEGEND_PAD;
        for (i, s) in self.series.iter().enumerate() {
            let style = Style::of(i);
            let y = TOP + row_h * (i as f64 + 0.5);
            writeln!(
                o,
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" {}/>"#,
                num(x0),
                num(y),
                num(x0 + LEGEND_SAMPLE),
                num(y),
                style.stroke()
            )?;
            writeln!(
                o,
                r#"<g fill="{}">{}</g>"#,
                style.colour,
                style.marker(x0 + LEGEND_SAMPLE / 2.0, y)
            )?;
            writeln!(
                o,
                r#"<text x="{}" y="{}" dy="0.35em">{}</text>"#,
                num(x0 + LEGEND_SAMPLE + LEGEND_GAP),
                num(y),
                escape(&s.name)
            )?;
        }
        writeln!(o, "</g>")?;
        writeln!(o, "</svg>")?;
        Ok(out)
    }
}

/// How the `i`-th series is drawn.
struct Style {
    colour: &'static str,
    /// 0, 1 or 2: solid + circles, dashed + squares, dotted + triangles.
    cycle: usize,
}

impl Style {
    fn of(i: usize) -> Style {
        Style {
            colour: PALETTE[i % PALETTE.len()],
            cycle: (i / PALETTE.len()) % DASHES.len(),
        }
    }

    /// The stroke attributes of the line.
    fn stroke(&self) -> String {
        let mut s = format!(
            r#"stroke="{}" stroke-width="1.75" stroke-linejoin="round""#,
            self.colour
        );
        if let Some(dash) = DASHES[self.cycle] {
            write!(s, r#" stroke-dasharray="{dash}""#).expect("writing to a String");
        }
        s
    }

    /// A marker centred on `(x, y)`, filled by the enclosing group.
    fn marker(&self, x: f64, y: f64) -> String {
        match self.cycle {
            0 => format!(r#"<circle cx="{}" cy="{}" r="2.5"/>"#, num(x), num(y)),
            1 => format!(
                r#"<rect x="{}" y="{}" width="5" height="5"/>"#,
                num(x - 2.5),
                num(y - 2.5)
            ),
            _ => format!(
                r#"<path d="M{},{} L{},{} L{},{} Z"/>"#,
                num(x),
                num(y - 3.2),
                num(x + 3.0),
                num(y + 2.2),
                num(x - 3.0),
                num(y + 2.2)
            ),
        }
    }
}

fn is_finite((x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite()
}

/// A pixel coordinate or size with two decimals (never `-0.00`).
fn num(v: f64) -> String {
    let s = format!("{:.2}", v.clamp(-MAX_COORD, MAX_COORD));
    if s == "-0.00" { "0.00".to_string() } else { s }
}

/// `text` with the XML special characters escaped and control characters (which XML 1.0 does
/// not allow) replaced by U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The range of an axis: the explicit one (checked) or the data's, rounded outwards.
fn axis_range(
    name: &str,
    scale: Scale,
    explicit: Option<(f64, f64)>,
    values: impl Iterator<Item = f64>,
) -> Result<(f64, f64)> {
    let (lo, hi) = match explicit {
        Some((lo, hi)) => {
            ensure!(
                lo.is_finite() && hi.is_finite() && lo < hi,
                "the {name} range ({lo}, {hi}) is empty, inverted or not finite"
            );
            ensure!(
                scale == Scale::Linear || lo > 0.0,
                "the {name} range ({lo}, {hi}) is not positive on a log axis"
            );
            (lo, hi)
        }
        None => {
            let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            if min > max {
                bail!("no finite data for the {name} axis");
            }
            match scale {
                Scale::Linear => nice_linear_range(min, max),
                Scale::Log10 => nice_log_range(min, max),
            }
        }
    };
    // Ranges that f64 cannot divide into ticks (spans near overflow or underflow).
    let usable = match scale {
        Scale::Linear => ((hi - lo) / TARGET_INTERVALS).is_normal(),
        Scale::Log10 => lo.is_normal() && hi.is_finite(),
    };
    ensure!(
        usable && lo < hi,
        "the {name} range ({lo}, {hi}) is too wide or too narrow to draw"
    );
    Ok((lo, hi))
}

/// `[min, max]` widened to multiples of the tick step (and to a non-empty range).
fn nice_linear_range(mut min: f64, mut max: f64) -> (f64, f64) {
    if min == max {
        let d = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
        min -= d;
        max += d;
    }
    let (step, _) = nice_step((max - min) / TARGET_INTERVALS);
    ((min / step).floor() * step, (max / step).ceil() * step)
}

/// `[min, max]` (positive) widened to 1, 2 or 5 × 10^k (and to a non-empty range).
fn nice_log_range(min: f64, max: f64) -> (f64, f64) {
    let e = decade_floor(min);
    let lo = [5, 2, 1]
        .into_iter()
        .map(|m| scaled(m, e))
        .find(|&v| v <= min)
        .unwrap_or(scaled(1, e));
    let e = decade_floor(max);
    let hi = [1, 2, 5, 10]
        .into_iter()
        .map(|m| scaled(m, e))
        .find(|&v| v >= max && v > lo)
        .unwrap_or(scaled(2, e + 1));
    (lo, hi)
}

/// A "nice" step near `raw` (> 0): `(m × 10^e, e)` with `m` in 1, 2, 5.
fn nice_step(raw: f64) -> (f64, i32) {
    let mut e = decade_floor(raw);
    let m = raw / pow10(e);
    let m = if m < 1.5 {
        1
    } else if m < 3.0 {
        2
    } else if m < 7.0 {
        5
    } else {
        e += 1;
        1
    };
    (scaled(m, e), e)
}

/// The labelled ticks of a linear axis over `[lo, hi]`: the multiples of a nice step.
fn linear_ticks(lo: f64, hi: f64) -> Vec<Tick> {
    let (step, e) = nice_step((hi - lo) / TARGET_INTERVALS);
    let decimals = usize::try_from(-e).unwrap_or(0);
    let k0 = (lo / step - 1e-9).ceil();
    let k1 = (hi / step + 1e-9).floor();
    if !(k0.is_finite() && k1.is_finite() && k1 - k0 <= 100.0) {
        return Vec::new(); // Only where the range is tiny compared to its values.
    }
    let mut ticks = Vec::new();
    let mut k = k0;
    while k <= k1 {
        let value = if k == 0.0 { 0.0 } else { k * step };
        ticks.push(Tick {
            value,
            label: format!("{value:.decimals$}"),
        });
        k += 1.0;
    }
    ticks
}

/// The labelled ticks and minor grid lines of a log axis over `[lo, hi]`.
///
/// Ticks are at decades (every n-th one if there are many); with fewer than three decades in
/// range, the 2× and 5× values are labelled too. Minor lines are at the other m × 10^k,
/// m = 2..9, unless the decades are thinned out.
fn log_ticks(lo: f64, hi: f64) -> (Vec<Tick>, Vec<f64>) {
    let inside = |v: f64| v >= lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12);
    let (first, last) = (decade_floor(lo), decade_floor(hi));
    let decades: Vec<i32> = (first..=last).filter(|&e| inside(pow10(e))).collect();
    let mut ticks = Vec::new();
    let mut minor = Vec::new();
    if decades.len() >= 3 {
        let n = decades.len() as i32;
        let stride = ((n + MAX_DECADES - 1) / MAX_DECADES).max(1);
        for &e in decades.iter().filter(|&&e| (e - decades[0]) % stride == 0) {
            ticks.push(Tick {
                value: pow10(e),
                label: pow10_label(1, e),
            });
        }
        if stride == 1 {
            for e in first..=last {
                for m in 2..=9 {
                    let v = scaled(m, e);
                    if inside(v) {
                        minor.push(v);
                    }
                }
            }
        }
    } else {
        for e in first..=last {
            for m in 1..=9 {
                let v = scaled(m, e);
                if !inside(v) {
                    continue;
                }
                if matches!(m, 1 | 2 | 5) {
                    ticks.push(Tick {
                        value: v,
                        label: pow10_label(m, e),
                    });
                } else {
                    minor.push(v);
                }
            }
        }
    }
    (ticks, minor)
}

/// The largest `e` with `10^e <= v` (`v` > 0), robust to rounding in `log10`.
fn decade_floor(v: f64) -> i32 {
    // Clamped beyond f64's exponents so that 0, inf and NaN cannot loop or overflow.
    const LIMIT: i32 = 400;
    let mut e = (v.log10().floor() as i32).clamp(-LIMIT, LIMIT);
    while e > -LIMIT && pow10(e) > v {
        e -= 1;
    }
    while e < LIMIT && pow10(e + 1) <= v {
        e += 1;
    }
    e
}

/// `10^e`, correctly rounded.
fn pow10(e: i32) -> f64 {
    scaled(1, e)
}

/// `m × 10^e`, correctly rounded.
fn scaled(m: u8, e: i32) -> f64 {
    format!("{m}e{e}").parse().expect("a float literal")
}

/// `m × 10^e` written out (`"200"`, `"0.005"`), or as `"2e9"` for very large or small values.
fn pow10_label(m: u8, e: i32) -> String {
    match e {
        0..=6 => format!("{m}{}", "0".repeat(e as usize)),
        -5..=-1 => format!("0.{}{m}", "0".repeat((-e - 1) as usize)),
        _ => format!("{m}e{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ticks: &[Tick]) -> Vec<f64> {
        ticks.iter().map(|t| t.value).collect()
    }

    fn labels(ticks: &[Tick]) -> Vec<&str> {
        ticks.iter().map(|t| t.label.as_str()).collect()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_string(),
            points: points.to_vec(),
        }
    }

    fn chart() -> Chart {
        Chart {
            title: "Accuracy vs dimension".into(),
            x_label: "dimension D".into(),
            y_label: "accuracy".into(),
            x_scale: Scale::Log10,
            y_scale: Scale::Linear,
            x_range: None,
            y_range: Some((0.0, 1.0)),
            series: vec![
                series("resonator", &[(256.0, 0.2), (1024.0, 0.7), (4096.0, 0.99)]),
                series(
                    "diffusion",
                    &[(256.0, 0.4), (1024.0, f64::NAN), (4096.0, 1.0)],
                ),
            ],
            hlines: vec![(0.99, "99%".into())],
        }
    }

    /// A basic well-formedness check: tags balance, one root element, attributes are quoted,
    /// and `&` only starts one of the five predefined entities.
    fn check_well_formed(xml: &str) {
        fn check_text(text: &str) {
            assert!(!text.contains('<'), "raw < in {text:?}");
            for (i, _) in text.match_indices('&') {
                let rest = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| rest.starts_with(e)),
                    "raw & in {text:?}"
                );
            }
        }
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = xml;
        while let Some(start) = rest.find('<') {
            check_text(&rest[..start]);
            if stack.is_empty() {
                assert!(rest[..start].trim().is_empty(), "text outside the root");
            }
            rest = &rest[start..];
            if let Some(r) = rest.strip_prefix("<?") {
                let end = r.find("?>").expect("unterminated <?");
                rest = &r[end + 2..];
                continue;
            }
            let end = rest.find('>').expect("unterminated tag");
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "bad tag name {name:?}"
            );
            // Attributes: name="value" pairs.
            let mut attrs = tag[name_end..].trim();
            while !attrs.is_empty() {
                let eq = attrs.find("=\"").expect("attribute without =\"");
                let attr = &attrs[..eq];
                assert!(
                    !attr.is_empty() && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                    "bad attribute name {attr:?}"
                );
                let value_end = attrs[eq + 2..].find('"').expect("unterminated value");
                check_text(&attrs[eq + 2..eq + 2 + value_end]);
                attrs = attrs[eq + 2 + value_end + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        assert!(rest.trim().is_empty(), "text after the root");
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(roots, 1, "one root element");
    }

    #[test]
    fn linear_ticks_0_to_1() {
        let ticks = linear_ticks(0.0, 1.0);
        assert_close(&values(&ticks), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(labels(&ticks), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    }

    #[test]
    fn linear_ticks_10_to_100() {
        let ticks = linear_ticks(10.0, 100.0);
        assert_close(&values(&ticks), &[20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(labels(&ticks), ["20", "40", "60", "80", "100"]);
        // The automatic range rounds outwards to the step.
        assert_eq!(nice_linear_range(10.0, 100.0), (0.0, 100.0));
        let ticks = linear_ticks(0.0, 100.0);
        assert_eq!(labels(&ticks), ["0", "20", "40", "60", "80", "100"]);
    }

    #[test]
    fn linear_ticks_other_ranges() {
        assert_eq!(
            labels(&linear_ticks(-1.0, 1.0)),
            ["-1.0", "-0.5", "0.0", "0.5", "1.0"]
        );
        assert_eq!(
            labels(&linear_ticks(0.0, 0.1)),
            ["0.00", "0.02", "0.04", "0.06", "0.08", "0.10"]
        );
        assert_eq!(
            labels(&linear_ticks(0.0, 7.0)),
            ["0", "1", "2", "3", "4", "5", "6", "7"]
        );
        let (lo, hi) = nice_linear_range(0.013, 0.87);
        assert_close(&[lo, hi], &[0.0, 1.0]);
        let (lo, hi) = nice_linear_range(3.0, 3.0);
        assert!(lo < 3.0 && hi > 3.0);
        assert_eq!(nice_linear_range(0.0, 0.0), (-1.0, 1.0));
        for raw in [0.1, 0.3, 1.0, 4.5, 18.0, 99.0, 1234.5] {
            let (step, e) = nice_step(raw);
            let m = step / pow10(e);
            assert!(
                [1.0, 2.0, 5.0].iter().any(|w| (m - w).abs() < 1e-9),
                "{raw}: {step}"
            );
        }
    }

    #[test]
    fn log_ticks_1_to_1000() {
        let (ticks, minor) = log_ticks(1.0, 1000.0);
        assert_eq!(values(&ticks), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(labels(&ticks), ["1", "10", "100", "1000"]);
        assert_eq!(minor.len(), 3 * 8);
        assert_eq!(nice_log_range(1.0, 1000.0), (1.0, 1000.0));
        assert_eq!(nice_log_range(3.0, 250.0), (2.0, 500.0));
        assert_eq!(nice_log_range(64.0, 4096.0), (50.0, 5000.0));
        assert_eq!(nice_log_range(5.0, 5.0), (5.0, 10.0));
        assert_eq!(nice_log_range(10.0, 10.0), (10.0, 20.0));
        assert_eq!(nice_log_range(0.0013, 0.7), (0.001, 1.0));
    }

    #[test]
    fn log_ticks_other_ranges() {
        let (ticks, _) = log_ticks(0.001, 1.0);
        assert_eq!(labels(&ticks), ["0.001", "0.01", "0.1", "1"]);
        // Within one decade the 2× and 5× values are labelled.
        let (ticks, minor) = log_ticks(1.5, 60.0);
        assert_eq!(labels(&ticks), ["2", "5", "10", "20", "50"]);
        assert!(!minor.is_empty());
        let (ticks, minor) = log_ticks(50.0, 5000.0);
        assert_eq!(
            labels(&ticks),
            ["50", "100", "200", "500", "1000", "2000", "5000"]
        );
        assert!(!minor.is_empty());
        // Many decades are thinned out.
        let (ticks, minor) = log_ticks(1e-10, 1e10);
        assert!(
            ticks.len() <= MAX_DECADES as usize + 1,
            "{:?}",
            labels(&ticks)
        );
        assert_eq!(ticks[0].label, "1e-10");
        assert!(minor.is_empty());
        for e in -300..300 {
            assert_eq!(decade_floor(pow10(e)), e);
            assert_eq!(decade_floor(pow10(e) * 3.0), e);
            assert_eq!(decade_floor(pow10(e) * 0.999_999), e - 1);
        }
        // Degenerate inputs terminate.
        for v in [0.0, f64::INFINITY, f64::NAN, f64::MIN_POSITIVE / 1e10] {
            decade_floor(v);
        }
    }

    #[test]
    fn renders_deterministically() {
        let a = chart().to_svg().unwrap();
        let b = chart().to_svg().unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("<?xml"));
        assert!(a.ends_with("</svg>\n"));
        check_well_formed(&a);
        // Fixed two-decimal coordinates.
        assert!(a.contains(r#"<circle cx="#));
        assert!(!a.contains("-0.00"));
    }

    #[test]
    fn gaps_break_the_line() {
        let mut c = chart();
        c.series = vec![series(
            "gappy",
            &[
                (1.0, 0.1),
                (2.0, 0.2),
                (3.0, f64::NAN),
                (4.0, 0.4),
                (5.0, 0.5),
                (6.0, f64::INFINITY),
                (7.0, 0.7),
            ],
        )];
        let svg = c.to_svg().unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        // Five finite points plus one legend marker.
        assert_eq!(svg.matches("<circle").count(), 6);
        check_well_formed(&svg);
    }

    #[test]
    fn escapes_text() {
        let mut c = chart();
        c.title = r#"a<b & "c">'d'"#.into();
        c.series[0].name = "<script>&amp;".into();
        c.hlines = vec![(0.5, "x < y".into())];
        c.x_label = "\u{7}bell".into();
        let svg = c.to_svg().unwrap();
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;&gt;&apos;d&apos;"));
        assert!(svg.contains("&lt;script&gt;&amp;amp;"));
        assert!(svg.contains("x &lt; y"));
        assert!(!svg.contains("<script"));
        assert!(!svg.contains('\u{7}'));
        check_well_formed(&svg);
    }

    #[test]
    fn many_series_fit_the_legend() {
        for n in [1, 12, 22, 24, 29, 36, 40] {
            let mut c = chart();
            c.series = (0..n)
                .map(|i| {
                    let name = format!("series number {i:>2} with a long name");
                    let y = 0.02 * i as f64;
                    series(&name, &[(1.0, y + 0.1), (10.0, y + 0.2), (100.0, y + 0.3)])
                })
                .collect();
            let svg = c.to_svg().unwrap();
            check_well_formed(&svg);
            let dims = |attr: &str| -> f64 {
                let i = svg.find(&format!(r#"{attr}=""#)).unwrap() + attr.len() + 2;
                svg[i..i + svg[i..].find('"').unwrap()].parse().unwrap()
            };
            let (width, height) = (dims("width"), dims("height"));
            assert!(width >= CANVAS_W + 30.0 * 0.6 * 10.0, "{n}: {width}");
            if n <= 24 {
                assert_eq!(height, MIN_H, "{n}");
            }
            let (row_h, _) = if n <= 22 {
                LEGEND_ROWS[0]
            } else {
                LEGEND_ROWS[1]
            };
            assert!(TOP + n as f64 * row_h <= height - LEGEND_BOTTOM, "{n}");
            // Distinct styles for the first 36.
            let styles: Vec<String> = (0..n.min(36))
                .map(|i| {
                    let s = Style::of(i);
                    format!("{} {}", s.stroke(), s.marker(0.0, 0.0))
                })
                .collect();
            let mut unique = styles.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), styles.len());
        }
    }

    #[test]
    fn rejects_bad_charts() {
        let err = |c: Chart| c.to_svg().unwrap_err().to_string();

        let mut c = chart();
        c.series.clear();
        assert!(err(c).contains("no series"));

        let mut c = chart();
        c.series.push(series("empty", &[]));
        assert!(err(c).contains("no finite points"));

        let mut c = chart();
        c.series
            .push(series("nan", &[(1.0, f64::NAN), (f64::NAN, 2.0)]));
        assert!(err(c).contains("no finite points"));

        let mut c = chart();
        c.series[0].points.push((0.0, 0.5));
        assert!(err(c).contains("log x axis"));

        let mut c = chart();
        c.y_scale = Scale::Log10;
        c.y_range = None;
        c.series[0].points.push((10.0, -1.0));
        assert!(err(c).contains("log y axis"));

        let mut c = chart();
        c.y_scale = Scale::Log10;
        c.y_range = None;
        c.hlines = vec![(0.0, "zero".into())];
        assert!(err(c).contains("log y axis"));

        for range in [
            (1.0, 1.0),
            (1.0, 0.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
        ] {
            let mut c = chart();
            c.y_range = Some(range);
            assert!(
                err(c).contains("empty, inverted or not finite"),
                "{range:?}"
            );
        }

        let mut c = chart();
        c.x_range = Some((0.0, 100.0));
        assert!(err(c).contains("not positive on a log axis"));

        for points in [[(1.0, -1e308), (2.0, 1e308)], [(1.0, 0.0), (2.0, 1e-320)]] {
            let mut c = chart();
            c.y_range = None;
            c.series = vec![series("extreme", &points)];
            c.hlines.clear();
            let e = err(c);
            assert!(e.contains("too wide or too narrow"), "{points:?}: {e}");
        }
    }

    #[test]
    fn explicit_ranges_clip_and_skip_hlines() {
        let mut c = chart();
        c.x_scale = Scale::Linear;
        c.x_range = Some((0.0, 1000.0));
        c.y_range = Some((0.0, 0.5));
        let svg = c.to_svg().unwrap();
        assert!(svg.contains(r#"clip-path="url(#plot-area)""#));
        assert!(
            !svg.contains("99%"),
            "the reference line at 0.99 is out of range"
        );
        check_well_formed(&svg);

        // An automatic y range covers the reference lines.
        let mut c = chart();
        c.y_range = None;
        c.series.truncate(1);
        c.series[0].points = vec![(1.0, 0.1), (2.0, 0.3)];
        let svg = c.to_svg().unwrap();
        assert!(svg.contains(">99%</text>"));
        assert!(svg.contains(">1.0</text>"));
    }
}
