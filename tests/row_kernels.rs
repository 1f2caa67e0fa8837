//! The row kernels of small batches (`src/flow/small.rs`) against the
//! batched path: bit for bit, for every batch size they take, both time
//! modes, fused solver stages, every solver, and through the fitted model's
//! sampling (one matrix per call against one call for all).

use coreflow::core_model::{CoreModelChoice, FlowOptions};
use coreflow::datasets::{planted_low_rank, CoreDistribution, PlantedSpec};
use coreflow::flow::ode::{integrate, integrate_scratch};
use coreflow::flow::small::SMALL_ROWS;
use coreflow::flow::{NetConfig, RowKernel, Solver, SolverOptions, Times, VelocityNet};
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::rng;
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model};
use faer::{Mat, Par};

/// Whether this machine has the kernels' instruction set (then the row
/// kernels must be in use, not merely correct when present).
fn fast_kernel_expected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(target_arch = "aarch64")
    }
}

fn cfg(dim: usize, hidden: usize, layers: usize, time_freqs: usize) -> NetConfig {
    NetConfig {
        dim,
        hidden,
        layers,
        time_freqs,
    }
}

fn normals(n: usize, d: usize, seed: u64) -> Mat<f64> {
    let mut r = rng::stream(seed, 1);
    let mut row = vec![0.0; n * d];
    rng::fill_normal(&mut r, &mut row);
    Mat::from_fn(n, d, |i, j| row[i * d + j])
}

fn assert_bitwise(a: &Mat<f64>, b: &Mat<f64>, what: &str) {
    assert_eq!(a.shape(), b.shape());
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            assert_eq!(
                a[(i, j)].to_bits(),
                b[(i, j)].to_bits(),
                "{what}: ({i}, {j}): {} vs {}",
                a[(i, j)],
                b[(i, j)]
            );
        }
    }
}

/// The shapes: the demo's network, odd widths (padding of every panel
/// group), a flow block wider than one panel, a single hidden layer.
fn shapes() -> [NetConfig; 6] {
    [
        cfg(12, 256, 3, 16),
        cfg(3, 7, 2, 1),
        cfg(17, 40, 1, 3),
        cfg(40, 72, 2, 5),
        cfg(1, 16, 3, 2),
        cfg(5, 100, 4, 4),
    ]
}

/// The widest kernel the machine and the compiler allow is the one chosen.
#[test]
fn the_widest_available_row_kernel_is_chosen() {
    let net = VelocityNet::<f32>::new(shapes()[0], 1).unwrap();
    #[allow(unused_mut)]
    let mut want = if fast_kernel_expected() {
        Some(if cfg!(target_arch = "x86_64") {
            "avx2"
        } else {
            "portable"
        })
    } else {
        None
    };
    #[cfg(all(target_arch = "x86_64", coreflow_avx512))]
    if std::arch::is_x86_feature_detected!("avx512f") && want.is_some() {
        want = Some("avx512");
    }
    assert_eq!(net.row_kernel(), want);
}

#[test]
fn row_kernels_equal_the_batched_path_bitwise() {
    for (s, c) in shapes().into_iter().enumerate() {
        let net = VelocityNet::<f32>::new(c, 10 + s as u64).unwrap();
        if fast_kernel_expected() {
            assert!(net.has_row_kernels(), "{c:?}: no row kernels");
        }
        let batched = net.without_row_kernels();
        assert!(!batched.has_row_kernels());
        let mut kernels = vec![("default", net.clone())];
        for (name, k) in [
            ("detected", RowKernel::Detected),
            ("avx2", RowKernel::Avx2),
            ("portable", RowKernel::Portable),
        ] {
            let with = net.with_row_kernel(k);
            if fast_kernel_expected() && (name != "avx2" || cfg!(target_arch = "x86_64")) {
                assert!(with.is_some(), "{c:?}: {name} kernel does not reproduce");
            }
            kernels.extend(with.map(|n| (name, n)));
        }
        let x = normals(SMALL_ROWS, c.dim, 3);
        let kdir = normals(SMALL_ROWS, c.dim, 4);
        let t: Vec<f64> = (0..SMALL_ROWS).map(|i| 0.05 + 0.11 * i as f64).collect();
        let mut mem = MemBuffer::new(net.forward_scratch(SMALL_ROWS));
        let stack = MemStack::new(&mut mem);
        for b in 1..=SMALL_ROWS {
            // 0.5 is on the precomputed time grid, 0.43 is not.
            for times in [
                Times::Shared(0.43),
                Times::Shared(0.5),
                Times::PerRow(&t[..b]),
            ] {
                let xb = x.as_ref().subrows(0, b);
                let kb = kdir.as_ref().subrows(0, b);
                let mut want = Mat::<f64>::zeros(b, c.dim);
                let mut want_stage = Mat::<f64>::zeros(b, c.dim);
                batched.forward(times, xb, want.as_mut(), Par::Seq, stack);
                batched.forward_stage(times, xb, 0.3, kb, want_stage.as_mut(), Par::Seq, stack);
                for (name, n) in &kernels {
                    let mut got = Mat::<f64>::zeros(b, c.dim);
                    n.forward(times, xb, got.as_mut(), Par::Seq, stack);
                    assert_bitwise(&got, &want, &format!("{c:?} {name} b={b} {times:?}"));
                    n.forward_stage(times, xb, 0.3, kb, got.as_mut(), Par::Seq, stack);
                    assert_bitwise(&got, &want_stage, &format!("{c:?} {name} stage b={b}"));
                }
            }
        }
    }
}

#[test]
fn divergences_on_row_kernels_equal_the_batched_path_bitwise() {
    for (s, c) in shapes().into_iter().enumerate() {
        let net = VelocityNet::<f32>::new(c, 20 + s as u64).unwrap();
        let batched = net.without_row_kernels();
        let x = normals(SMALL_ROWS, c.dim, 5);
        let probe = normals(SMALL_ROWS, c.dim, 6);
        let t: Vec<f64> = (0..SMALL_ROWS).map(|i| 0.9 - 0.07 * i as f64).collect();
        let mut mem = MemBuffer::new(
            net.forward_div_scratch(SMALL_ROWS)
                .or(net.forward_jvp_scratch(SMALL_ROWS)),
        );
        let stack = MemStack::new(&mut mem);
        for b in [1, 2, 5, SMALL_ROWS] {
            let (xb, pb) = (x.as_ref().subrows(0, b), probe.as_ref().subrows(0, b));
            for times in [Times::Shared(0.25), Times::PerRow(&t[..b])] {
                let mut v = [Mat::<f64>::zeros(b, c.dim), Mat::<f64>::zeros(b, c.dim)];
                let mut div = [vec![0.0; b], vec![0.0; b]];
                let mut quad = [vec![0.0; b], vec![0.0; b]];
                for (i, n) in [&net, &batched].into_iter().enumerate() {
                    n.forward_div(times, xb, v[i].as_mut(), &mut div[i], Par::Seq, stack);
                    n.forward_jvp(times, xb, pb, v[i].as_mut(), &mut quad[i], Par::Seq, stack);
                }
                let bits = |v: &[f64]| v.iter().map(|d| d.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&div[0]), bits(&div[1]), "{c:?} b={b}: divergence");
                assert_eq!(bits(&quad[0]), bits(&quad[1]), "{c:?} b={b}: Hutchinson");
                assert_bitwise(&v[0], &v[1], &format!("{c:?} b={b}: velocity"));
            }
        }
    }
}

#[test]
fn mutable_parameters_drop_the_row_kernels_not_the_results() {
    let c = cfg(4, 24, 2, 3);
    let mut net = VelocityNet::<f32>::new(c, 5).unwrap();
    let x = normals(2, 4, 6);
    let mut mem = MemBuffer::new(net.forward_scratch(2));
    let mut before = Mat::<f64>::zeros(2, 4);
    net.forward(
        Times::Shared(0.2),
        x.as_ref(),
        before.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
    );
    net.params_mut()[0] += 0.5;
    assert!(!net.has_row_kernels(), "stale packed weights kept");
    let mut after = Mat::<f64>::zeros(2, 4);
    net.forward(
        Times::Shared(0.2),
        x.as_ref(),
        after.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert!(before != after, "the change reached the output");
    // Rebuilt from the new parameters, the row kernels agree again.
    let rebuilt = VelocityNet::from_params(c, net.params().to_vec()).unwrap();
    assert_eq!(rebuilt.has_row_kernels(), fast_kernel_expected());
    let mut again = Mat::<f64>::zeros(2, 4);
    rebuilt.forward(
        Times::Shared(0.2),
        x.as_ref(),
        again.as_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
    );
    assert_bitwise(&again, &after, "rebuilt");
}

#[test]
fn solves_of_single_rows_equal_one_batched_solve() {
    let c = cfg(6, 48, 3, 4);
    let net = VelocityNet::<f32>::new(c, 8).unwrap();
    let n = 40; // above SMALL_ROWS: the batched path
    let x0 = normals(n, c.dim, 9);
    // 8 steps: every stage time on the precomputed grid; 7: none inside.
    for (solver, steps) in [
        (Solver::Euler, 7),
        (Solver::Heun, 8),
        (Solver::Rk4, 7),
        (Solver::Rk4, 8),
        (Solver::Dopri5, 7),
    ] {
        let opts = SolverOptions {
            solver,
            steps,
            ..Default::default()
        };
        let mut mem = MemBuffer::new(integrate_scratch(&net, n, &opts));
        let mut all = x0.clone();
        integrate(&net, &opts, 0.0, 1.0, all.as_mut(), MemStack::new(&mut mem)).unwrap();
        for (start, len) in [(0, 1), (5, 1), (11, 3), (20, 8), (39, 1)] {
            let mut part = x0.as_ref().subrows(start, len).to_owned();
            integrate(
                &net,
                &opts,
                0.0,
                1.0,
                part.as_mut(),
                MemStack::new(&mut mem),
            )
            .unwrap();
            let want = all.as_ref().subrows(start, len).to_owned();
            assert_bitwise(
                &part,
                &want,
                &format!("{solver:?} {steps} rows {start}..+{len}"),
            );
        }
    }
}

fn fitted() -> (Model, usize, usize) {
    let (m, n) = (20, 16);
    let mut spec = PlantedSpec::new(150, m, n, 3, 3, 41);
    spec.core = CoreDistribution::Mixture {
        components: 3,
        spread: 0.3,
    };
    spec.noise = 1e-3;
    let p = planted_low_rank(&spec).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, 150, m, n).unwrap();
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        threads: 1,
        seed: 2,
        flow: FlowOptions {
            core_model: CoreModelChoice::Flow,
            hidden: 40,
            layers: 2,
            time_freqs: 4,
            steps: 150,
            batch_size: 64,
            ..FlowOptions::default()
        },
        ..FitOptions::default()
    };
    (Model::fit(&batch, &opts).unwrap(), m, n)
}

fn sample(model: &Model, opts: &SolverOptions, first: u64, count: usize) -> Vec<u64> {
    let info = model.info();
    let (m, n) = (info.rows, info.cols);
    let mut out = vec![0.0; count * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let mut buf = MemBuffer::new(model.sample_scratch(count, opts));
    model
        .sample(opts, 7, first, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    out.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn one_matrix_per_call_equals_one_call_for_all() {
    let (model, m, n) = fitted();
    let per = m * n;
    for opts in [
        SolverOptions::default(),
        SolverOptions {
            solver: Solver::Dopri5,
            ..Default::default()
        },
    ] {
        let count = 40;
        let all = sample(&model, &opts, 0, count);
        for j in [0usize, 1, 17, 39] {
            assert_eq!(
                sample(&model, &opts, j as u64, 1),
                all[j * per..(j + 1) * per],
                "{:?}: matrix {j} alone",
                opts.solver
            );
        }
        // Small calls (row kernels) and a large one (batched) in one run.
        let mut split = Vec::new();
        for (first, len) in [(0, 4), (4, 3), (7, 16), (23, 8), (31, 9)] {
            split.extend(sample(&model, &opts, first, len));
        }
        assert_eq!(split, all, "{:?}: 40 = 4 + 3 + 16 + 8 + 9", opts.solver);
    }
}

#[test]
fn one_matrix_per_call_scores_like_one_call_for_all() {
    let (model, m, n) = fitted();
    let opts = SolverOptions::default();
    let count = 40; // above SMALL_ROWS: the batched path
    let data: Vec<f64> = sample(&model, &opts, 100, count)
        .into_iter()
        .map(f64::from_bits)
        .collect();
    let score = |lo: usize, len: usize| {
        let batch =
            MatrixBatch::from_c_order(&data[lo * m * n..(lo + len) * m * n], len, m, n).unwrap();
        let mut lp = vec![0.0; len];
        let mut buf = MemBuffer::new(model.log_prob_scratch(len, &opts));
        model
            .log_prob(&opts, &batch, &mut lp, None, MemStack::new(&mut buf))
            .unwrap();
        lp
    };
    let all = score(0, count);
    for j in [0, 5, 39] {
        assert_eq!(score(j, 1)[0].to_bits(), all[j].to_bits(), "matrix {j}");
    }
}
