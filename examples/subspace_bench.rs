//! Times the subspace fit stage by stage, like `shared/peers/numpy_subspace_bench.py`,
//! and prints one JSON line.
//!
//! Data: N matrices `X_i = U* C_i V*^T + noise E_i` (m x n), U*, V* random orthonormal,
//! core entries `C_i[j, k] ~ N(0, a_j^2 b_k^2)` with `a_j = (j + 1)^-decay`,
//! `b_k = (k + 1)^-decay`, E_i standard normal; C order `(N, m, n)` by default.
//! Generation is not timed.
//!
//! Timed (median of `--repeats`):
//! * `gram_init_s`: Gram matrices A and B on the caller's data + HOSVD ([`hosvd_init`]);
//! * `fit_s`: the whole [`fit`]: Gram + HOSVD + HOOI to `--tol` + canonical basis + the
//!   cores of all samples (from the last sweep's products); `total_s` = `fit_s`;
//! * `hooi_s`: `fit_s - gram_init_s`;
//! * `project_s`: all cores `C_i = U^T X_i V` by [`project_cores`] alone (for reference;
//!   the fit does not need it);
//! * `peer_rule`: the peer's stages with its stopping rule (stop at the first relative
//!   increase below `--tol`, objective of the initialisation by one pass), built from the
//!   public kernels: [`hosvd_init`], `objective`, `hooi_sweep`, [`project_cores`].
//!
//! Usage: `cargo run --release --example subspace_bench -- --n 1000 --rows 200 --cols 200
//! --rank-rows 20 --rank-cols 20 --threads 1 [--layout c|f] [--repeats 3]`

use coreflow::numerics::{self, MemBuffer, MemStack, Par};
use coreflow::reduce::LocalReducer;
use coreflow::subspace::{self, fit, hosvd_init, project_cores, SubspaceOptions};
use coreflow::MatrixBatch;
use faer::Mat;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::time::Instant;

struct Gauss(Xoshiro256PlusPlus, Option<f64>);

impl Gauss {
    fn new(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed), None)
    }
    fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Box–Muller.
    fn next(&mut self) -> f64 {
        if let Some(z) = self.1.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let rad = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.1 = Some(rad * s);
        rad * c
    }
}

fn orthonormal(rows: usize, cols: usize, g: &mut Gauss) -> Mat<f64> {
    let mut q = Mat::from_fn(rows, cols, |_, _| g.next());
    let mut buf = MemBuffer::new(numerics::retract_qr_scratch(rows, cols, Par::Seq));
    numerics::retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
    q
}

/// HOSVD initialisation: the leading eigenvectors of the Gram matrices.
fn hosvd(
    batch: &MatrixBatch,
    m: usize,
    n: usize,
    r: usize,
    s: usize,
    par: Par,
) -> (Mat<f64>, Mat<f64>) {
    let mut row_vecs = Mat::<f64>::zeros(m, m);
    let mut col_vecs = Mat::<f64>::zeros(n, n);
    let (mut rv, mut cv) = (vec![0.0; m], vec![0.0; n]);
    let mut buf = MemBuffer::new(subspace::hosvd_init_scratch(m, n, par));
    hosvd_init(
        batch,
        None,
        row_vecs.as_mut(),
        &mut rv,
        col_vecs.as_mut(),
        &mut cv,
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    (
        row_vecs.get(.., ..r).to_owned(),
        col_vecs.get(.., ..s).to_owned(),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut n_samples = 1000;
    let (mut m, mut n, mut r, mut s) = (200, 200, 20, 20);
    let (mut noise, mut decay, mut tol) = (0.01, 0.5, 1e-10);
    let (mut max_iter, mut threads, mut repeats, mut seed) = (200usize, 1usize, 3usize, 0u64);
    let mut col_major = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--n" => n_samples = val.parse().unwrap(),
            "--rows" => m = val.parse().unwrap(),
            "--cols" => n = val.parse().unwrap(),
            "--rank-rows" => r = val.parse().unwrap(),
            "--rank-cols" => s = val.parse().unwrap(),
            "--noise" => noise = val.parse().unwrap(),
            "--decay" => decay = val.parse().unwrap(),
            "--tol" => tol = val.parse().unwrap(),
            "--max-iter" => max_iter = val.parse().unwrap(),
            "--threads" => threads = val.parse().unwrap(),
            "--repeats" => repeats = val.parse().unwrap(),
            "--seed" => seed = val.parse().unwrap(),
            "--layout" => col_major = val == "f",
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }

    let mut g = Gauss::new(seed);
    let u_true = orthonormal(m, r, &mut g);
    let v_true = orthonormal(n, s, &mut g);
    let mut data = vec![0.0; n_samples * m * n];
    let mut core = Mat::<f64>::zeros(r, s);
    for i in 0..n_samples {
        for k in 0..s {
            for j in 0..r {
                let scale = ((j + 1) as f64).powf(-decay) * ((k + 1) as f64).powf(-decay);
                core[(j, k)] = scale * g.next();
            }
        }
        let x = &u_true * &core * v_true.transpose();
        for b in 0..n {
            for a in 0..m {
                let idx = if col_major {
                    a + m * (b + n * i)
                } else {
                    (i * m + a) * n + b
                };
                data[idx] = x[(a, b)] + noise * g.next();
            }
        }
    }
    let batch = if col_major {
        MatrixBatch::from_col_major(&data, m, n, n_samples).unwrap()
    } else {
        MatrixBatch::from_c_order(&data, n_samples, m, n).unwrap()
    };
    let par = numerics::par_for_threads(threads);
    let opts = SubspaceOptions {
        rank_rows: r,
        rank_cols: s,
        tol,
        max_iter,
        threads,
        ..Default::default()
    };

    let (mut t_init, mut t_fit, mut t_proj) = (vec![], vec![], vec![]);
    let (mut p_init, mut p_hooi, mut p_proj) = (vec![], vec![], vec![]);
    let mut peer_iterations = 0;
    let mut peer_objective = 0.0;
    let mut last = None;
    let mut cores = vec![0.0; n_samples * r * s];
    for rep in 0..repeats {
        // `fit` with the library's stopping rule (3 consecutive small increases).
        let t0 = Instant::now();
        let (_, _) = hosvd(&batch, m, n, r, s, par);
        let t1 = Instant::now();
        let result = fit(&batch, &opts, &LocalReducer, &mut |_, _, _| true).unwrap();
        let t2 = Instant::now();
        let mut buf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, par));
        project_cores(
            &batch,
            None,
            result.u.as_ref(),
            result.v.as_ref(),
            &mut cores,
            par,
            MemStack::new(&mut buf),
        )
        .unwrap();
        let t3 = Instant::now();
        assert!(cores
            .iter()
            .zip(&result.cores)
            .all(|(a, b)| (a - b).abs() <= 1e-10 * (1.0 + a.abs())));
        t_init.push((t1 - t0).as_secs_f64());
        t_fit.push((t2 - t1).as_secs_f64());
        t_proj.push((t3 - t2).as_secs_f64());
        eprintln!(
            "repeat {rep}: gram_init {:.3}s fit {:.3}s ({} it, {} steps) project alone {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            result.iterations,
            result.steps,
            (t3 - t2).as_secs_f64()
        );
        last = Some(result);

        // The peer's stages and stopping rule (stop at the first relative
        // increase below tol) with the public kernels.
        let t0 = Instant::now();
        let (mut u, mut v) = hosvd(&batch, m, n, r, s, par);
        let t1 = Instant::now();
        let mut buf = MemBuffer::new(
            subspace::hooi_sweep_scratch(n_samples, m, n, r, s, par)
                .or(subspace::objective_scratch(m, n, r, s, par)),
        );
        let mut f = subspace::objective(
            &batch,
            None,
            u.as_ref(),
            v.as_ref(),
            &LocalReducer,
            par,
            MemStack::new(&mut buf),
        )
        .unwrap();
        let mut it = 0;
        while it < max_iter {
            it += 1;
            let f_new = subspace::hooi_sweep(
                &batch,
                None,
                u.as_mut(),
                v.as_mut(),
                &LocalReducer,
                par,
                MemStack::new(&mut buf),
            )
            .unwrap();
            let rel = (f_new - f) / f.abs();
            f = f_new;
            if rel < tol {
                break;
            }
        }
        let t2 = Instant::now();
        let mut buf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, par));
        project_cores(
            &batch,
            None,
            u.as_ref(),
            v.as_ref(),
            &mut cores,
            par,
            MemStack::new(&mut buf),
        )
        .unwrap();
        let t3 = Instant::now();
        p_init.push((t1 - t0).as_secs_f64());
        p_hooi.push((t2 - t1).as_secs_f64());
        p_proj.push((t3 - t2).as_secs_f64());
        peer_iterations = it;
        peer_objective = f;
        eprintln!(
            "repeat {rep} (peer rule): gram_init {:.3}s hooi {:.3}s ({it} it) project {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
    let result = last.unwrap();
    let dist = |q: &Mat<f64>, qt: &Mat<f64>| {
        let k = q.ncols() as f64;
        let overlap = (q.transpose() * qt).squared_norm_l2();
        (1.0 - overlap / k).max(0.0).sqrt()
    };
    let f_check: f64 = cores.iter().map(|c| c * c).sum();
    let totals: Vec<f64> = t_fit.clone();
    let peer_totals: Vec<f64> = (0..p_init.len())
        .map(|k| p_init[k] + p_hooi[k] + p_proj[k])
        .collect();
    let gram = median(&mut t_init);
    let fit_s = median(&mut t_fit);
    let proj = median(&mut t_proj);
    let (pi, ph, pp) = (
        median(&mut p_init),
        median(&mut p_hooi),
        median(&mut p_proj),
    );
    println!(
        "{{\"bench\": \"coreflow_subspace\", \"threads\": {threads}, \"layout\": \"{}\", \"n\": {n_samples}, \"rows\": {m}, \"cols\": {n}, \"rank_rows\": {r}, \"rank_cols\": {s}, \"noise\": {noise}, \"decay\": {decay}, \"tol\": {tol}, \"gram_init_s\": {gram:.6}, \"fit_s\": {fit_s:.6}, \"hooi_s\": {:.6}, \"project_s\": {proj:.6}, \"total_s\": {:.6}, \"hooi_iterations\": {}, \"hooi_steps\": {}, \"converged\": {}, \"objective\": {}, \"objective_from_cores\": {f_check}, \"subspace_dist_u\": {:e}, \"subspace_dist_v\": {:e}, \"history\": {:?}, \"total_all\": {totals:?}, \"peer_rule\": {{\"total_all\": {peer_totals:?}, \"gram_init_s\": {pi:.6}, \"hooi_s\": {ph:.6}, \"project_s\": {pp:.6}, \"total_s\": {:.6}, \"hooi_iterations\": {peer_iterations}, \"objective\": {peer_objective}}}}}",
        if col_major { "f" } else { "c" },
        fit_s - gram,
        fit_s,
        result.iterations,
        result.steps,
        result.converged,
        result.objective,
        dist(&result.u, &u_true),
        dist(&result.v, &v_true),
        result.history,
        pi + ph + pp,
    );
}
