//! Incomplete training data on planted low-rank sets: subspace recovery and
//! held-out completion error against what the true bases give, and the cost
//! of a completion round against a complete-data HOOI iteration.
//!
//! Run: `cargo run --release --example completion_bench [-- --quick]`
//! Prints a markdown table (the one in BENCHMARKS.md).

use coreflow::completion::{complete_one, CorePrior, Observed};
use coreflow::datasets::{mcar_mask, planted_low_rank, Planted, PlantedSpec};
use coreflow::metrics::subspace_distance;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model, Stage};
use faer::Mat;
use std::time::Instant;

/// Held-out error of the first `k` samples completed by `fill(i, out)`.
fn held_out(p: &Planted, mask: &[u8], k: usize, mut fill: impl FnMut(usize, &mut Mat<f64>)) -> f64 {
    let (m, n) = (p.data.rows, p.data.cols);
    let mut z = Mat::<f64>::zeros(m, n);
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        fill(i, &mut z);
        let x = p.data.sample(i);
        for a in 0..m {
            for b in 0..n {
                if mask[i * m * n + a * n + b] == 0 {
                    num += (z[(a, b)] - x[(a, b)]).powi(2);
                    den += x[(a, b)].powi(2);
                }
            }
        }
    }
    (num / den).sqrt()
}

/// Seconds between consecutive progress reports of `stage`, from the second on.
fn round_times(
    model_fit: impl FnOnce(&mut dyn FnMut(&coreflow::Progress) -> bool),
    stage: Stage,
) -> Vec<f64> {
    let mut stamps = Vec::new();
    model_fit(&mut |p| {
        if p.stage == stage {
            stamps.push(Instant::now());
        }
        true
    });
    stamps
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (m, n, r, s, noise) = if quick {
        (60, 50, 5, 5, 1e-2)
    } else {
        (200, 200, 10, 10, 1e-2)
    };
    let counts: &[usize] = if quick { &[100] } else { &[300, 1000] };
    let threads = std::env::var("COREFLOW_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let eval = 100; // samples whose held-out entries are scored
    println!("planted {m} x {n}, ranks {r} x {s}, noise {noise}, MCAR; threads {threads} (0 = all); held-out error on {eval} samples\n");
    println!("| N | missing | rounds | fit s | dist U | dist V | completion error | true bases | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &count in counts {
        let mut spec = PlantedSpec::new(count, m, n, r, s, 7);
        spec.noise = noise;
        let p = planted_low_rank(&spec).unwrap();
        for rho in [0.0, 0.2, 0.4, 0.6] {
            let mask = mcar_mask(count, m, n, rho, 8).unwrap();
            let batch = MatrixBatch::from_c_order(&p.data.data, count, m, n).unwrap();
            let batch = if rho > 0.0 {
                batch.with_mask(&mask).unwrap()
            } else {
                batch
            };
            let opts = FitOptions {
                rank_rows: r,
                rank_cols: s,
                threads,
                ..FitOptions::default().geometry_only()
            };
            let t = Instant::now();
            let model = Model::fit(&batch, &opts).unwrap();
            let secs = t.elapsed().as_secs_f64();
            let du = subspace_distance(model.u(), p.u.as_ref()).unwrap();
            let dv = subspace_distance(model.v(), p.v.as_ref()).unwrap();
            let (ours, truth) = if rho > 0.0 {
                let mut buf = MemBuffer::new(model.complete_scratch(1));
                let ours = held_out(&p, &mask, eval.min(count), |i, z| {
                    let one = MatrixBatch::from_c_order(
                        &p.data.data[i * m * n..(i + 1) * m * n],
                        1,
                        m,
                        n,
                    )
                    .unwrap()
                    .with_mask(&mask[i * m * n..(i + 1) * m * n])
                    .unwrap();
                    let mut out = vec![0.0; m * n];
                    let mut ob = MatrixBatchMut::from_c_order(&mut out, 1, m, n).unwrap();
                    model
                        .complete(&one, &mut ob, MemStack::new(&mut buf))
                        .unwrap();
                    *z = Mat::from_fn(m, n, |a, b| out[a * n + b]);
                });
                // The true bases with a weak prior: least squares on the
                // observed entries of each matrix.
                let prior = CorePrior::isotropic(vec![0.0; r * s], 1e6, noise * noise);
                let mut buf =
                    MemBuffer::new(coreflow::completion::complete_one_scratch(m, n, r, s, 0));
                let truth = held_out(&p, &mask, eval.min(count), |i, z| {
                    let one = MatrixBatch::from_c_order(
                        &p.data.data[i * m * n..(i + 1) * m * n],
                        1,
                        m,
                        n,
                    )
                    .unwrap()
                    .with_mask(&mask[i * m * n..(i + 1) * m * n])
                    .unwrap();
                    complete_one(
                        p.u.as_ref(),
                        p.v.as_ref(),
                        None,
                        &prior,
                        None,
                        one.sample(0),
                        Observed::Mask(one.mask(0).unwrap()),
                        z.as_mut(),
                        MemStack::new(&mut buf),
                    )
                    .unwrap();
                });
                (ours, truth)
            } else {
                (f64::NAN, f64::NAN)
            };
            let info = model.info();
            let rounds = if info.masked {
                info.completion_iterations
            } else {
                info.subspace_iterations
            };
            println!(
                "| {count} | {:.0} % | {rounds} | {secs:.2} | {du:.2e} | {dv:.2e} | {ours:.4e} | {truth:.4e} | {:.3} |",
                rho * 100.0,
                ours / truth
            );
        }
        // Cost of one round: completion (40 % missing) vs complete-data HOOI.
        let mask = mcar_mask(count, m, n, 0.4, 8).unwrap();
        let full = MatrixBatch::from_c_order(&p.data.data, count, m, n).unwrap();
        let masked = full.with_mask(&mask).unwrap();
        let o = FitOptions {
            rank_rows: r,
            rank_cols: s,
            threads,
            subspace_tol: 0.0,
            subspace_max_iter: 8,
            completion_tol: 0.0,
            completion_max_iter: 8,
            ..FitOptions::default().geometry_only()
        };
        let hooi = median(round_times(
            |cb| drop(Model::fit_with_progress(&full, &o, cb).unwrap()),
            Stage::Subspace,
        ));
        let comp = median(round_times(
            |cb| drop(Model::fit_with_progress(&masked, &o, cb).unwrap()),
            Stage::Completion,
        ));
        println!(
            "\nN = {count}: one complete-data HOOI iteration {:.1} ms, one completion round {:.1} ms (ratio {:.2})\n",
            hooi * 1e3,
            comp * 1e3,
            comp / hooi
        );
    }
}
