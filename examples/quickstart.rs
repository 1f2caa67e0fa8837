//! Fits CoreFlow's geometry to a built-in synthetic set of low-rank matrices
//! and reports what it learned: the ranks chosen by energy, the subspace
//! error against the planted truth, and the encode/decode round trip.
//!
//! Run: `cargo run --release --example quickstart`

use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model};
use faer::Mat;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::time::Instant;

fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
    let v = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn main() -> Result<(), coreflow::Error> {
    let (count, rows, cols, r, s, noise) = (500, 200, 200, 8, 6, 1e-3);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let u_true = Mat::from_fn(rows, r, |_, _| normal(&mut rng))
        .qr()
        .compute_thin_Q();
    let v_true = Mat::from_fn(cols, s, |_, _| normal(&mut rng))
        .qr()
        .compute_thin_Q();
    let mut data = vec![0.0; count * rows * cols];
    for i in 0..count {
        let c = Mat::from_fn(r, s, |a, b| normal(&mut rng) * (1.0 + (a * s + b) as f64));
        let x = &u_true * &c * v_true.transpose();
        for a in 0..rows {
            for b in 0..cols {
                data[(i * rows + a) * cols + b] = x[(a, b)] + noise * normal(&mut rng);
            }
        }
    }
    println!("data: {count} matrices of {rows} x {cols}, planted ranks {r} x {s}, noise {noise}");

    let train = MatrixBatch::from_c_order(&data, count, rows, cols)?;
    let opts = FitOptions {
        rank_rows: 0,
        rank_cols: 0,
        energy: 0.999,
        ..FitOptions::default().geometry_only()
    };
    let t = Instant::now();
    let model = Model::fit(&train, &opts)?;
    let info = model.info();
    println!(
        "fit: {:.3} s, ranks chosen by energy {} x {}, {} HOOI iterations (converged: {}), explained energy {:.6}",
        t.elapsed().as_secs_f64(),
        info.rank_rows,
        info.rank_cols,
        info.subspace_iterations,
        info.subspace_converged,
        info.explained_energy
    );
    let dist = |a: faer::MatRef<f64>, b: faer::MatRef<f64>| {
        (a * a.transpose() - b * b.transpose()).norm_l2() / (2.0 * a.ncols() as f64).sqrt()
    };
    if info.rank_rows == r && info.rank_cols == s {
        println!(
            "subspace distance to the truth: U {:.2e}, V {:.2e}",
            dist(model.u(), u_true.as_ref()),
            dist(model.v(), v_true.as_ref())
        );
    }

    // Encode ten matrices to their cores and decode them back.
    let ten = MatrixBatch::from_c_order(&data[..10 * rows * cols], 10, rows, cols)?;
    let mut cores = vec![0.0; 10 * model.core_dim()];
    let mut ws = MemBuffer::new(model.encode_scratch(10).or(model.decode_scratch(10)));
    model.encode(&ten, &mut cores, MemStack::new(&mut ws))?;
    let mut back = vec![0.0; 10 * rows * cols];
    let mut out = MatrixBatchMut::from_c_order(&mut back, 10, rows, cols)?;
    model.decode(&cores, &mut out, MemStack::new(&mut ws))?;
    let (mut num, mut den) = (0.0, 0.0);
    for (a, b) in back.iter().zip(&data[..10 * rows * cols]) {
        num += (a - b) * (a - b);
        den += b * b;
    }
    println!(
        "round trip of 10 matrices through {} core values each: relative error {:.2e} (noise floor {:.2e})",
        model.core_dim(),
        (num / den).sqrt(),
        noise * ((rows * cols) as f64).sqrt() / (den / 10.0).sqrt()
    );
    Ok(())
}
