//! Small raster plots written as PNG: heat-map grids of matrices and line
//! plots of spectra.
//!
//! Two pictures do not justify a plotting library: this module draws into
//! an RGB buffer (rectangles, lines, a 5x7 bitmap font for labels) and
//! encodes it with the `png` crate.

use crate::error::CliError;
use std::path::Path;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GRAY: Rgb = [110, 110, 110];
pub const LIGHT: Rgb = [225, 225, 225];

/// Line colours for the spectrum plot (colour-blind safe, Okabe-Ito).
pub const SERIES: [Rgb; 6] = [
    [0, 0, 0],
    [213, 94, 0],
    [0, 114, 178],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
];

/// An RGB image.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    px: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, bg: Rgb) -> Self {
        let mut px = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            px.extend_from_slice(&bg);
        }
        Self { width, height, px }
    }

    /// Sets one pixel; coordinates outside the image are ignored, so shapes
    /// may be drawn partly off the canvas.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let k = (y as usize * self.width + x as usize) * 3;
            self.px[k..k + 3].copy_from_slice(&c);
        }
    }

    #[cfg(test)]
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let k = (y * self.width + x) * 3;
        [self.px[k], self.px[k + 1], self.px[k + 2]]
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A one-pixel rectangle outline.
    pub fn frame(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + h - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + w - 1, y, 1, h, c);
    }

    /// A line of `width` pixels (Bresenham with a square brush).
    pub fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, width: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let lo = -(width - 1) / 2;
        loop {
            self.fill_rect(x + lo, y + lo, width, width, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `s` with its top-left corner at (x, y); `scale` multiplies the
    /// 5x7 glyphs. Lower-case letters are drawn as capitals.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(ox + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Draws `s` rotated a quarter turn counter-clockwise (reading upwards),
    /// its baseline along x and its first glyph at the bottom (x, y).
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let oy = y - k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(
                            x + row as i64 * scale,
                            oy - (col + 1) * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Writes the image as an 8-bit RGB PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), CliError> {
        let fail = |e: String| CliError::input(format!("{}: cannot write: {e}", path.display()));
        let file = std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(file),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| fail(e.to_string()))?;
        w.write_image_data(&self.px)
            .map_err(|e| fail(e.to_string()))?;
        w.finish().map_err(|e| fail(e.to_string()))
    }
}

/// Width in pixels of `s` drawn at `scale`.
pub fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (6 * n - 1) * scale
    }
}

/// Diverging colour map (after ColorBrewer RdBu): -1 dark blue, 0 near
/// white, +1 dark red; values beyond +-1 saturate.
pub fn diverging(t: f64) -> Rgb {
    const STOPS: [(f64, [f64; 3]); 7] = [
        (-1.0, [5.0, 48.0, 97.0]),
        (-0.6, [67.0, 147.0, 195.0]),
        (-0.25, [209.0, 229.0, 240.0]),
        (0.0, [247.0, 247.0, 247.0]),
        (0.25, [253.0, 219.0, 199.0]),
        (0.6, [214.0, 96.0, 77.0]),
        (1.0, [103.0, 0.0, 31.0]),
    ];
    let t = if t.is_nan() { 0.0 } else { t.clamp(-1.0, 1.0) };
    let k = STOPS
        .windows(2)
        .position(|w| t <= w[1].0)
        .unwrap_or(STOPS.len() - 2);
    let ((t0, c0), (t1, c1)) = (STOPS[k], STOPS[k + 1]);
    let f = (t - t0) / (t1 - t0);
    std::array::from_fn(|i| (c0[i] + f * (c1[i] - c0[i])).round() as u8)
}

/// A matrix to draw: `rows x cols` values in C order.
#[derive(Copy, Clone)]
pub struct Mat<'a> {
    pub data: &'a [f64],
    pub rows: usize,
    pub cols: usize,
}

/// Draws `m` into the `w x h` box at (x, y), each pixel the mean of the
/// entries whose cells it covers (so thin features survive downsampling),
/// coloured by `diverging(value / vmax)`.
pub fn draw_matrix(cv: &mut Canvas, x: i64, y: i64, w: usize, h: usize, m: Mat, vmax: f64) {
    let span = |p: usize, pixels: usize, len: usize| {
        let lo = p * len / pixels;
        let hi = ((p + 1) * len).div_ceil(pixels).max(lo + 1).min(len);
        lo..hi
    };
    for py in 0..h {
        let rr = span(py, h, m.rows);
        for px in 0..w {
            let cc = span(px, w, m.cols);
            let (mut s, mut n) = (0.0, 0usize);
            for r in rr.clone() {
                for c in cc.clone() {
                    s += m.data[r * m.cols + c];
                    n += 1;
                }
            }
            cv.set(x + px as i64, y + py as i64, diverging(s / n as f64 / vmax));
        }
    }
}

/// Layout of the side-by-side heat-map figure.
pub struct PairLayout {
    pub grid_rows: usize,
    pub grid_cols: usize,
    pub cell_w: usize,
    pub cell_h: usize,
}

pub const MARGIN: i64 = 16;
const GAP: i64 = 4;
const PANEL_GAP: i64 = 28;
const TITLE_H: i64 = 30;
const COLORBAR_W: i64 = 96;
/// Pixels of the longer side of each matrix in the heat-map grid.
pub const CELL: usize = 96;

impl PairLayout {
    /// A grid of up to `max_grid x max_grid` matrices of `rows x cols`.
    pub fn new(shown: usize, rows: usize, cols: usize, max_grid: usize) -> Self {
        let n = shown.clamp(1, max_grid.saturating_mul(max_grid));
        let grid_cols = (n as f64).sqrt().ceil() as usize;
        let grid_rows = n.div_ceil(grid_cols);
        let big = rows.max(cols);
        Self {
            grid_rows,
            grid_cols,
            cell_w: (CELL * cols).div_ceil(big),
            cell_h: (CELL * rows).div_ceil(big),
        }
    }
    pub fn panel_w(&self) -> i64 {
        self.grid_cols as i64 * (self.cell_w as i64 + GAP) - GAP
    }
    pub fn panel_h(&self) -> i64 {
        self.grid_rows as i64 * (self.cell_h as i64 + GAP) - GAP
    }
    /// Top-left corner of panel 0 or 1.
    pub fn panel_origin(&self, panel: usize) -> (i64, i64) {
        (
            MARGIN + panel as i64 * (self.panel_w() + PANEL_GAP),
            MARGIN + TITLE_H,
        )
    }
    pub fn size(&self) -> (usize, usize) {
        let w = 2 * MARGIN + 2 * self.panel_w() + PANEL_GAP + COLORBAR_W;
        let h = 2 * MARGIN + TITLE_H + self.panel_h();
        (w as usize, h as usize)
    }
}

/// Two grids of matrices side by side (e.g. training and generated) with
/// one colour scale `[-vmax, vmax]` for both, so colours compare across the
/// panels, and a colour bar.
pub fn pair_figure(titles: [&str; 2], sets: [&[Mat]; 2], vmax: f64) -> Canvas {
    let first = sets[0]
        .first()
        .or(sets[1].first())
        .expect("matrices to draw");
    let shown = sets[0].len().max(sets[1].len());
    let lay = PairLayout::new(shown, first.rows, first.cols, usize::MAX);
    let (w, h) = lay.size();
    let mut cv = Canvas::new(w, h, WHITE);
    for (p, (title, set)) in titles.iter().zip(sets).enumerate() {
        let (x0, y0) = lay.panel_origin(p);
        cv.text(x0, MARGIN + 4, title, 2, BLACK);
        for (k, m) in set.iter().enumerate() {
            let (gr, gc) = (k / lay.grid_cols, k % lay.grid_cols);
            let x = x0 + gc as i64 * (lay.cell_w as i64 + GAP);
            let y = y0 + gr as i64 * (lay.cell_h as i64 + GAP);
            draw_matrix(&mut cv, x, y, lay.cell_w, lay.cell_h, *m, vmax);
        }
    }
    // Colour bar: +vmax at the top, -vmax at the bottom.
    let (x1, y0) = lay.panel_origin(1);
    let bx = x1 + lay.panel_w() + 20;
    let bh = lay.panel_h();
    for yy in 0..bh {
        let t = 1.0 - 2.0 * yy as f64 / (bh - 1).max(1) as f64;
        cv.fill_rect(bx, y0 + yy, 14, 1, diverging(t));
    }
    cv.frame(bx - 1, y0 - 1, 16, bh + 2, GRAY);
    for (t, label) in [
        (1.0, fmt_tick(vmax)),
        (0.0, "0".into()),
        (-1.0, fmt_tick(-vmax)),
    ] {
        let yy = y0 + ((1.0 - t) / 2.0 * (bh - 1) as f64).round() as i64;
        cv.fill_rect(bx + 15, yy, 4, 1, GRAY);
        cv.text(bx + 22, (yy - 3).clamp(y0, y0 + bh - 7), &label, 1, BLACK);
    }
    cv
}

/// A short label for a tick value: 3 significant digits, exponent form
/// outside [1e-2, 1e4).
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if (1e-2..1e4).contains(&a) {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if a >= 100.0 {
            format!("{v:.0}")
        } else {
            s.to_string()
        }
    } else {
        let e = a.log10().floor() as i32;
        let mant = v / 10f64.powi(e);
        if (mant.abs() - 1.0).abs() < 1e-9 {
            format!("{}1E{e}", if v < 0.0 { "-" } else { "" })
        } else {
            format!("{mant:.1}E{e}")
        }
    }
}

/// One line of a line plot.
pub struct Series<'a> {
    pub label: &'a str,
    pub values: &'a [f64],
    pub color: Rgb,
    pub width: i64,
}

/// Line plot of `series` against the index 1, 2, ... on a logarithmic
/// vertical axis, with axes, ticks, grid lines and a legend.
pub fn log_line_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    width: usize,
    height: usize,
) -> Canvas {
    let mut cv = Canvas::new(width, height, WHITE);
    let (left, right, top, bottom) = (78i64, 20i64, 40i64, 50i64);
    let (pw, ph) = (width as i64 - left - right, height as i64 - top - bottom);
    let n = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(1)
        .max(2);
    // Vertical range in decades: the reference (first) series sets the
    // bottom, so that a generator whose spectrum falls to rounding level
    // shows as a drop to the axis instead of squeezing the reference into a
    // few pixels; never more than 8 decades below the largest value.
    let positive = |s: &Series| -> Vec<f64> {
        s.values
            .iter()
            .copied()
            .filter(|v| *v > 0.0 && v.is_finite())
            .collect()
    };
    let all: Vec<f64> = series.iter().flat_map(&positive).collect();
    let mut hi = all.iter().copied().fold(0.0f64, f64::max);
    let reference = series.first().map(positive).unwrap_or_default();
    let mut lo = if reference.is_empty() {
        &all
    } else {
        &reference
    }
    .iter()
    .copied()
    .fold(f64::INFINITY, f64::min)
        * 0.5;
    if hi.is_nan() || hi <= 0.0 {
        (lo, hi) = (0.1, 1.0);
    }
    lo = lo.max(hi * 1e-8);
    let (d0, d1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let xpix = |i: f64| left + ((i - 1.0) / (n - 1) as f64 * (pw - 1) as f64).round() as i64;
    let ypix = |v: f64| {
        // Values below the axis are drawn on it.
        let t = (v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0);
        top + ph - 1 - (t * (ph - 1) as f64).round() as i64
    };
    // Grid and ticks: every decade, with 2 and 5 between when few decades.
    let decades = (d1 - d0) as i64;
    for k in 0..=decades {
        let base = 10f64.powf(d0 + k as f64);
        let y = ypix(base);
        cv.fill_rect(left, y, pw, 1, LIGHT);
        cv.fill_rect(left - 5, y, 5, 1, BLACK);
        let label = fmt_tick(base);
        cv.text(left - 8 - text_width(&label, 1), y - 3, &label, 1, BLACK);
        if decades <= 3 && k < decades {
            for m in [2.0, 5.0] {
                let y = ypix(base * m);
                cv.fill_rect(left, y, pw, 1, [240, 240, 240]);
                cv.fill_rect(left - 3, y, 3, 1, BLACK);
            }
        }
    }
    let step = nice_step((n - 1) as f64 / 8.0).max(1.0) as usize;
    let mut i = 0;
    while i <= n {
        let at = i.max(1);
        let x = xpix(at as f64);
        cv.fill_rect(x, top, 1, ph, LIGHT);
        cv.fill_rect(x, top + ph, 1, 5, BLACK);
        let label = at.to_string();
        cv.text(
            x - text_width(&label, 1) / 2,
            top + ph + 9,
            &label,
            1,
            BLACK,
        );
        i += step;
    }
    // Axes on top of the grid.
    cv.fill_rect(left, top, 1, ph, BLACK);
    cv.fill_rect(left, top + ph, pw, 1, BLACK);
    cv.text(left + (pw - text_width(title, 2)) / 2, 12, title, 2, BLACK);
    cv.text(
        left + (pw - text_width(xlabel, 1)) / 2,
        top + ph + 28,
        xlabel,
        1,
        BLACK,
    );
    cv.text_up(14, top + (ph + text_width(ylabel, 1)) / 2, ylabel, 1, BLACK);
    for s in series {
        let mut prev: Option<(i64, i64)> = None;
        for (k, &v) in s.values.iter().enumerate() {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (xpix((k + 1) as f64), ypix(v));
            if let Some(q) = prev {
                cv.line(q.0, q.1, p.0, p.1, s.width, s.color);
            } else {
                cv.fill_rect(p.0 - 1, p.1 - 1, 3, 3, s.color);
            }
            prev = Some(p);
        }
    }
    // Legend in the upper right corner of the plot area.
    let lw = series
        .iter()
        .map(|s| text_width(s.label, 1))
        .max()
        .unwrap_or(0)
        + 40;
    let lh = series.len() as i64 * 14 + 8;
    let (lx, ly) = (left + pw - lw - 10, top + 10);
    cv.fill_rect(lx, ly, lw, lh, WHITE);
    cv.frame(lx, ly, lw, lh, GRAY);
    for (k, s) in series.iter().enumerate() {
        let y = ly + 8 + k as i64 * 14;
        cv.fill_rect(lx + 6, y + 2, 22, s.width.max(2), s.color);
        cv.text(lx + 34, y, s.label, 1, BLACK);
    }
    cv
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

/// The 5x7 glyph of `c`: seven rows, bit 4 the leftmost column. Characters
/// without a glyph are drawn as a box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '^' => [0x04, 0x0A, 0x11, 0, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        'x' | '*' => [0, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_is_diverging_and_saturates() {
        assert_eq!(diverging(0.0), [247, 247, 247]);
        assert_eq!(diverging(-1.0), [5, 48, 97]);
        assert_eq!(diverging(1.0), [103, 0, 31]);
        assert_eq!(diverging(7.0), diverging(1.0));
        assert_eq!(diverging(f64::NAN), diverging(0.0));
        let (b, r) = (diverging(-0.5), diverging(0.5));
        assert!(b[2] > b[0] && r[0] > r[2]);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_tick(1.0), "1");
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(1e-3), "1E-3");
        assert_eq!(fmt_tick(-1e5), "-1E5");
        assert_eq!(fmt_tick(2.5e-4), "2.5E-4");
        assert_eq!(fmt_tick(150.0), "150");
    }

    #[test]
    fn matrix_is_drawn_with_its_signs() {
        // Left half negative, right half positive.
        let data: Vec<f64> = (0..64)
            .map(|k| if k % 8 < 4 { -1.0 } else { 1.0 })
            .collect();
        let m = Mat {
            data: &data,
            rows: 8,
            cols: 8,
        };
        let mut cv = Canvas::new(20, 20, WHITE);
        draw_matrix(&mut cv, 2, 2, 16, 16, m, 1.0);
        assert_eq!(cv.get(3, 10), diverging(-1.0));
        assert_eq!(cv.get(16, 10), diverging(1.0));
        assert_eq!(cv.get(0, 0), WHITE);
    }

    #[test]
    fn pair_figure_has_its_layout_size() {
        let data = vec![0.5; 12];
        let m = Mat {
            data: &data,
            rows: 3,
            cols: 4,
        };
        let set = vec![m; 5];
        let cv = pair_figure(["A", "B"], [&set, &set], 1.0);
        let lay = PairLayout::new(5, 3, 4, usize::MAX);
        assert_eq!((lay.grid_rows, lay.grid_cols), (2, 3));
        assert_eq!((lay.cell_w, lay.cell_h), (96, 72));
        assert_eq!((cv.width, cv.height), lay.size());
    }

    #[test]
    fn line_plot_draws_every_series() {
        let a = [10.0, 5.0, 1.0, 0.1];
        let b = [8.0, 4.0, 2.0, 0.5];
        let s = [
            Series {
                label: "A",
                values: &a,
                color: SERIES[1],
                width: 2,
            },
            Series {
                label: "B",
                values: &b,
                color: SERIES[2],
                width: 2,
            },
        ];
        let cv = log_line_plot("T", "X", "Y", &s, 300, 200);
        let count = |c: Rgb| {
            (0..cv.height)
                .flat_map(|y| (0..cv.width).map(move |x| (x, y)))
                .filter(|&(x, y)| cv.get(x, y) == c)
                .count()
        };
        assert!(count(SERIES[1]) > 100);
        assert!(count(SERIES[2]) > 100);
    }
}
