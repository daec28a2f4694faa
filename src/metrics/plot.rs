//! Reliability diagram as a PNG: per confidence bin, a bar of the accuracy (blue) over
//! the bin's mean confidence (grey outline, the gap), and the diagonal of perfect
//! calibration; below it, a strip of bin counts. Drawn directly into an RGB buffer.

use std::path::Path;

use crate::error::{Error, Result};

const W: usize = 480;
const H: usize = 560;
const M: usize = 40; // margin
const PLOT: usize = W - 2 * M; // square plot area
/// The most bins a diagram draws (each bar at least 2 pixels wide).
pub const MAX_BINS: usize = 100;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < W && y < H {
            let i = (y * W + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }
    fn outline(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        let (ya, yb) = (y0.min(y1), y0.max(y1));
        for x in x0..=x1 {
            self.set(x, ya, c);
            self.set(x, yb, c);
        }
        for y in ya..=yb {
            self.set(x0, y, c);
            self.set(x1, y, c);
        }
    }
}

/// Write the diagram of probabilities `p` [N, C] against labels `y`.
pub fn reliability_png(path: &Path, p: &[f64], c: usize, y: &[i64], bins: usize) -> Result<()> {
    if bins == 0 || bins > MAX_BINS {
        return Err(Error::flag(
            "--bins",
            format!("a reliability diagram draws 1 to {MAX_BINS} bins, not {bins}"),
        ));
    }
    let mut conf = vec![0.0; bins];
    let mut acc = vec![0.0; bins];
    let mut cnt = vec![0usize; bins];
    for (row, &label) in p.chunks_exact(c).zip(y) {
        let pred = super::predicted(row);
        let b = super::ece_bin(row[pred], bins);
        conf[b] += row[pred];
        acc[b] += (pred == label as usize) as u8 as f64;
        cnt[b] += 1;
    }
    let mut cv = Canvas::new();
    let base = M + PLOT; // y of the plot's bottom edge
    let bw = PLOT / bins;
    let maxc = cnt.iter().copied().max().unwrap_or(1).max(1);
    for b in 0..bins {
        let x0 = M + b * bw + 1;
        let x1 = M + (b + 1) * bw - 1;
        if cnt[b] > 0 {
            let a = acc[b] / cnt[b] as f64;
            let m = conf[b] / cnt[b] as f64;
            cv.rect(
                x0,
                base - (a * PLOT as f64) as usize,
                x1,
                base,
                [70, 110, 200],
            );
            cv.outline(
                x0,
                base - (m * PLOT as f64) as usize,
                x1,
                base,
                [120, 120, 120],
            );
        }
        let h = (cnt[b] as f64 / maxc as f64 * 60.0) as usize;
        cv.rect(x0, H - 20 - h, x1, H - 20, [160, 160, 160]);
    }
    for i in 0..PLOT {
        cv.set(M + i, base - i, [200, 60, 60]); // perfect calibration
    }
    cv.outline(M, M, M + PLOT, base, [0, 0, 0]);
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk(
        "Title".into(),
        "reliability diagram (x: confidence, y: accuracy)".into(),
    )
    .map_err(|e| Error::file(path, e.to_string()))?;
    let mut w = enc
        .write_header()
        .map_err(|e| Error::file(path, e.to_string()))?;
    w.write_image_data(&cv.px)
        .map_err(|e| Error::file(path, e.to_string()))?;
    w.finish().map_err(|e| Error::file(path, e.to_string()))?;
    crate::io::write_atomic(path, |f| std::io::Write::write_all(f, &buf))
}
