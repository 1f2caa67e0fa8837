//! Helpers for the end-to-end tests: run the built binary, write and read
//! `.npy` files independently of the tool's own reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }
    /// Asserts exit code 2 with exactly one line on stderr containing each
    /// of `needles`; returns that line.
    #[track_caller]
    pub fn bad_input(&self, needles: &[&str]) -> String {
        assert_eq!(
            self.code, 2,
            "expected exit code 2\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {:?}",
            self.stderr
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "stderr {:?} does not mention {n:?}",
                lines[0]
            );
        }
        lines[0].to_string()
    }
}

pub fn coreflow(args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_coreflow"))
        .args(args)
        .output()
        .expect("run coreflow");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh directory under the target directory, removed and recreated.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coreflow-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes a version-1.0 `.npy` file with the given header fields and raw
/// element bytes (padded to 64 bytes, as NumPy does).
pub fn write_npy_raw(path: &Path, descr: &str, fortran: bool, shape: &[usize], bytes: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {dims}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out).unwrap();
}

/// Reorders a C-order (N, m, n) stack to Fortran order.
pub fn to_fortran<T: Copy>(c: &[T], n: usize, m: usize, k: usize) -> Vec<T> {
    let mut f = c.to_vec();
    for i in 0..n {
        for r in 0..m {
            for col in 0..k {
                f[i + n * (r + m * col)] = c[(i * m + r) * k + col];
            }
        }
    }
    f
}

/// Writes float64 data of shape (N, m, n) given in C order, stored in C or
/// Fortran order.
pub fn write_f64(path: &Path, c: &[f64], shape: [usize; 3], fortran: bool) {
    let v = if fortran {
        to_fortran(c, shape[0], shape[1], shape[2])
    } else {
        c.to_vec()
    };
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy_raw(path, "<f8", fortran, &shape, &bytes);
}

pub fn write_f32(path: &Path, c: &[f64], shape: [usize; 3], fortran: bool) {
    let v = if fortran {
        to_fortran(c, shape[0], shape[1], shape[2])
    } else {
        c.to_vec()
    };
    let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    write_npy_raw(path, "<f4", fortran, &shape, &bytes);
}

pub fn write_mask(path: &Path, c: &[u8], shape: [usize; 3], fortran: bool, descr: &str) {
    let v = if fortran {
        to_fortran(c, shape[0], shape[1], shape[2])
    } else {
        c.to_vec()
    };
    write_npy_raw(path, descr, fortran, &shape, &v);
}

/// Reads a float64 C-order `.npy` file written by the tool.
pub fn read_f64(path: &Path) -> (Vec<usize>, Vec<f64>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "version 1.0 .npy");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0, "data aligned to 64 bytes");
    let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(h.contains("'descr': '<f8'"), "{h}");
    assert!(h.contains("'fortran_order': False"), "{h}");
    let open = h.find("'shape': (").unwrap() + 10;
    let close = open + h[open..].find(')').unwrap();
    let shape: Vec<usize> = h[open..close]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect();
    let data: Vec<f64> = b[10 + hl..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// A small synthetic set: waves, (count, rows, cols), C order.
pub fn waves(count: usize, rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    coreflow::Dataset::Waves
        .generate(&coreflow::DatasetSpec::new(count, rows, cols, seed))
        .unwrap()
        .data
}

/// Decodes a PNG: (width, height, RGB bytes).
pub fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// Variance of the grey level over a rectangle of an RGB image.
pub fn region_variance(
    img: &(usize, usize, Vec<u8>),
    x: usize,
    y: usize,
    w: usize,
    h: usize,
) -> f64 {
    let (width, _, px) = img;
    let mut v = Vec::with_capacity(w * h);
    for yy in y..y + h {
        for xx in x..x + w {
            let k = (yy * width + xx) * 3;
            v.push((px[k] as f64 + px[k + 1] as f64 + px[k + 2] as f64) / 3.0);
        }
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / v.len() as f64
}
