//! Writes the synthetic sets of DESIGN.md section 7 as .npy files, for
//! scripts that drive the command-line tool (scripts/impute_calibration.py):
//!
//!     cargo run --release --example export_synthetic -- DIR [COUNT] [SIZE]
//!
//! gives DIR/NAME_train.npy (COUNT matrices, default 600) and
//! DIR/NAME_test.npy (the next COUNT / 3 of the same set) of SIZE x SIZE (default 48)
//! for NAME in blobs, bands, waves, crosshatch: float64, C order.

use coreflow::{Dataset, DatasetSpec};
use std::io::Write;

fn write_npy(path: &std::path::Path, shape: [usize; 3], data: &[f64]) -> std::io::Result<()> {
    let dict = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        shape[0], shape[1], shape[2]
    );
    // Magic, version 1.0, header padded with spaces to a multiple of 64.
    let pad = 64 - (10 + dict.len() + 1) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad % 64));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for x in data {
        f.write_all(&x.to_le_bytes())?;
    }
    f.flush()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .ok_or("usage: export_synthetic DIR [COUNT] [SIZE]")?,
    );
    let count: usize = args.get(2).map_or(Ok(600), |s| s.parse())?;
    let size: usize = args.get(3).map_or(Ok(48), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    let sets = [
        ("blobs", Dataset::Blobs),
        ("bands", Dataset::Bands),
        ("waves", Dataset::Waves),
        ("crosshatch", Dataset::Crosshatch),
    ];
    for (name, set) in sets {
        // One set (the palette depends on the seed), split into train and test.
        let test = count / 3;
        let spec = DatasetSpec {
            count: count + test,
            rows: size,
            cols: size,
            seed: 1,
            ..DatasetSpec::default()
        };
        let all = set.generate(&spec)?;
        let cut = count * size * size;
        write_npy(
            &dir.join(format!("{name}_train.npy")),
            [count, size, size],
            &all.data[..cut],
        )?;
        write_npy(
            &dir.join(format!("{name}_test.npy")),
            [test, size, size],
            &all.data[cut..],
        )?;
    }
    Ok(())
}
