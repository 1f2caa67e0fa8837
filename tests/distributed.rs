//! Distributed fitting through the reduction hook: shards fitted by
//! participants that sum through an allreduce give the model of the whole
//! set. Processes are simulated by threads with a barrier-based allreduce.

use coreflow::datasets::{mcar_mask, planted_low_rank, PlantedSpec};
use coreflow::reduce::Reducer;
use coreflow::{Error, ErrorKind, FitOptions, MatrixBatch, Model};
use std::sync::{Barrier, Mutex};

/// An in-process allreduce among `p` participants: each deposits its buffer,
/// then every participant sums the deposits in participant order (so all
/// get bitwise the same sums, as with MPI's deterministic reductions).
struct ThreadAllreduce {
    slots: Vec<Mutex<Vec<f64>>>,
    barrier: Barrier,
    fail_at_call: Option<usize>,
}

struct Participant<'a> {
    shared: &'a ThreadAllreduce,
    rank: usize,
    calls: Mutex<usize>,
}

impl Reducer for Participant<'_> {
    fn sum_in_place(&self, buf: &mut [f64]) -> coreflow::Result<()> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        if Some(*calls) == self.shared.fail_at_call {
            // Every participant fails on the same call, as the contract asks.
            return Err(Error::new(
                ErrorKind::Communication,
                "allreduce: simulated failure",
            ));
        }
        *self.shared.slots[self.rank].lock().unwrap() = buf.to_vec();
        self.shared.barrier.wait();
        buf.fill(0.0);
        for slot in &self.shared.slots {
            for (b, x) in buf.iter_mut().zip(slot.lock().unwrap().iter()) {
                *b += x;
            }
        }
        self.shared.barrier.wait();
        Ok(())
    }
}

/// Fits `p` shards of `data` (C-order, split by samples) in parallel.
#[allow(clippy::too_many_arguments)]
fn fit_sharded(
    data: &[f64],
    mask: Option<&[u8]>,
    count: usize,
    m: usize,
    n: usize,
    p: usize,
    opts: &FitOptions,
    fail_at_call: Option<usize>,
) -> Vec<coreflow::Result<Model>> {
    let shared = ThreadAllreduce {
        slots: (0..p).map(|_| Mutex::new(Vec::new())).collect(),
        barrier: Barrier::new(p),
        fail_at_call,
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..p)
            .map(|rank| {
                let shared = &shared;
                scope.spawn(move || {
                    let range = count * rank / p..count * (rank + 1) / p;
                    let len = range.len();
                    let slice = &data[range.start * m * n..range.end * m * n];
                    let mut batch = MatrixBatch::from_c_order(slice, len, m, n).unwrap();
                    if let Some(mask) = mask {
                        batch = batch
                            .with_mask(&mask[range.start * m * n..range.end * m * n])
                            .unwrap();
                    }
                    let reducer = Participant {
                        shared,
                        rank,
                        calls: Mutex::new(0),
                    };
                    Model::fit_with_reducer(&batch, opts, &reducer, &mut |_| true)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn sharded_fits_match_the_single_process_fit() {
    let (count, m, n) = (90, 30, 24);
    let mut spec = PlantedSpec::new(count, m, n, 4, 3, 61);
    spec.noise = 1e-2;
    let planted = planted_low_rank(&spec).unwrap();
    let data = &planted.data.data;
    let mask = mcar_mask(count, m, n, 0.3, 62).unwrap();
    for masked in [false, true] {
        let opts = FitOptions {
            rank_rows: 4,
            rank_cols: 3,
            center: true,
            threads: 1,
            ..FitOptions::default().geometry_only()
        };
        let whole = MatrixBatch::from_c_order(data, count, m, n).unwrap();
        let whole = if masked {
            whole.with_mask(&mask).unwrap()
        } else {
            whole
        };
        let single = Model::fit(&whole, &opts).unwrap();
        for p in [1, 2, 4] {
            let fits = fit_sharded(
                data,
                masked.then_some(&mask[..]),
                count,
                m,
                n,
                p,
                &opts,
                None,
            );
            for (rank, fit) in fits.into_iter().enumerate() {
                let model = fit.unwrap();
                let du = (model.u() - single.u()).norm_max();
                let dv = (model.v() - single.v()).norm_max();
                assert!(
                    du < 1e-10 && dv < 1e-10,
                    "masked {masked}, p {p}, rank {rank}: {du} {dv}"
                );
                assert_eq!(model.info().train_count, count);
                let dm = (model.mean().unwrap() - single.mean().unwrap()).norm_max();
                assert!(dm < 1e-12, "mean differs by {dm}");
            }
        }
    }
}

/// Samples and completions (one vector), and log-densities of `model` on
/// fixed inputs.
fn gaussian_outputs(
    model: &Model,
    data: &[f64],
    mask: &[u8],
    m: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    use coreflow::flow::ode::SolverOptions;
    use coreflow::numerics::{MemBuffer, MemStack};
    use coreflow::MatrixBatchMut;
    let k = 5;
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(
        model
            .sample_scratch(k, &so)
            .or(model.log_prob_scratch(k, &so))
            .or(model.complete_scratch(k)),
    );
    let mut gen = vec![0.0; k * m * n];
    model
        .sample(
            &so,
            3,
            0,
            &mut MatrixBatchMut::from_c_order(&mut gen, k, m, n).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let input = MatrixBatch::from_c_order(&data[..k * m * n], k, m, n).unwrap();
    let mut lp = vec![0.0; k];
    model
        .log_prob(&so, &input, &mut lp, None, MemStack::new(&mut buf))
        .unwrap();
    let partial = input.with_mask(&mask[..k * m * n]).unwrap();
    let mut comp = vec![0.0; k * m * n];
    model
        .complete(
            &partial,
            &mut MatrixBatchMut::from_c_order(&mut comp, k, m, n).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    (gen.into_iter().chain(comp).collect(), lp)
}

#[test]
fn sharded_core_priors_and_gaussian_core_models_match_the_single_process_fit() {
    // The principal components of the cores go through the reducer: the
    // d x d scatter for d = 12 <= N = 90, the range finder for
    // d = 100 > N (signal rank 10 x 10, so the bases are well defined).
    // The mixture kind's EM and BIC selection too.
    use coreflow::core_model::CoreModelChoice;
    let (count, m, n) = (90, 30, 24);
    for (rank, kind) in [
        ((4, 3), CoreModelChoice::Gaussian),
        ((10, 10), CoreModelChoice::Gaussian),
        ((4, 3), CoreModelChoice::Mixture),
    ] {
        let mut spec = PlantedSpec::new(count, m, n, rank.0, rank.1, 65);
        spec.noise = 1e-2;
        let planted = planted_low_rank(&spec).unwrap();
        let data = &planted.data.data;
        let mask = mcar_mask(count, m, n, 0.3, 66).unwrap();
        let opts = FitOptions {
            rank_rows: rank.0,
            rank_cols: rank.1,
            center: true,
            threads: 1,
            flow: coreflow::core_model::FlowOptions {
                core_model: kind,
                steps: 0,
                holdout_fraction: 0.0,
                ..Default::default()
            },
            ..FitOptions::default()
        };
        let whole = MatrixBatch::from_c_order(data, count, m, n).unwrap();
        let single = Model::fit(&whole, &opts).unwrap();
        let d = rank.0 * rank.1;
        assert_eq!(single.core_prior().components(), d.min(count));
        let (expect, expect_lp) = gaussian_outputs(&single, data, &mask, m, n);
        let scale = expect.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for p in [1, 2, 4] {
            let fits = fit_sharded(data, None, count, m, n, p, &opts, None);
            let models: Vec<Model> = fits.into_iter().map(|f| f.unwrap()).collect();
            // Every participant holds bitwise the same model.
            let bytes = models[0].to_bytes();
            for other in &models[1..] {
                assert_eq!(other.to_bytes(), bytes, "{kind:?} d {d}, p {p}");
            }
            // The same noise law (its sums go through the reducer).
            let (nz, nz1) = (models[0].noise(), single.noise());
            assert_eq!(nz.dof(), nz1.dof(), "{kind:?} d {d}, p {p}");
            for (a, b) in nz
                .row_profile()
                .iter()
                .chain(nz.col_profile())
                .zip(nz1.row_profile().iter().chain(nz1.col_profile()))
            {
                assert!(
                    (a - b).abs() <= 1e-10 * b,
                    "{kind:?} d {d}, p {p}: {a} vs {b}"
                );
            }
            // And the same outputs as the single-process fit, up to the
            // rounding of sums taken in another order.
            let (got, got_lp) = gaussian_outputs(&models[0], data, &mask, m, n);
            let err = got
                .iter()
                .zip(&expect)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 1e-8 * scale,
                "{kind:?} d {d}, p {p}: {err} (scale {scale})"
            );
            for (a, b) in got_lp.iter().zip(&expect_lp) {
                assert!(
                    (a - b).abs() <= 1e-8 * b.abs(),
                    "{kind:?} d {d}, p {p}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn a_failing_allreduce_stops_every_participant() {
    let (count, m, n) = (40, 20, 16);
    let planted = planted_low_rank(&PlantedSpec::new(count, m, n, 2, 2, 63)).unwrap();
    let opts = FitOptions {
        rank_rows: 2,
        rank_cols: 2,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    for fail_at in [1, 3, 7] {
        let fits = fit_sharded(
            &planted.data.data,
            None,
            count,
            m,
            n,
            3,
            &opts,
            Some(fail_at),
        );
        for fit in fits {
            let err = fit.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Communication, "{err}");
        }
    }
}

/// Unbiased MMD^2 of samples from `model` against `fresh` (C-order).
fn mmd_of(model: &Model, fresh: &[f64], count: usize, m: usize, n: usize) -> f64 {
    use coreflow::flow::ode::SolverOptions;
    use coreflow::numerics::{MemBuffer, MemStack};
    let so = SolverOptions::default();
    let mut out = vec![0.0; count * m * n];
    let mut ob = coreflow::MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let mut buf = MemBuffer::new(model.sample_scratch(count, &so));
    model
        .sample(&so, 99, 0, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let real = MatrixBatch::from_c_order(fresh, count, m, n).unwrap();
    let gen = MatrixBatch::from_c_order(&out, count, m, n).unwrap();
    coreflow::metrics::mmd2(&real, &gen, coreflow::numerics::Par::Seq)
        .unwrap()
        .mmd2
}

#[test]
fn data_parallel_flow_training_gives_one_model_of_comparable_quality() {
    use coreflow::core_model::{CoreModelChoice, FlowOptions};
    use coreflow::datasets::CoreDistribution;
    let (count, m, n) = (240, 16, 12);
    let spec = |seed| {
        let mut s = PlantedSpec::new(count, m, n, 2, 2, 64);
        s.core = CoreDistribution::Mixture {
            components: 3,
            spread: 0.2,
        };
        s.noise = 1e-3;
        s.seed = seed;
        s
    };
    let train = planted_low_rank(&spec(64)).unwrap();
    // Fresh data from the same distribution: same bases and mixture (same
    // seed), so take the second half of a larger draw.
    let mut big = spec(64);
    big.count = 2 * count;
    let fresh_all = planted_low_rank(&big).unwrap();
    let fresh = &fresh_all.data.data[count * m * n..];
    let opts = |seed| FitOptions {
        rank_rows: 2,
        rank_cols: 2,
        threads: 1,
        seed,
        flow: FlowOptions {
            hidden: 32,
            layers: 2,
            time_freqs: 4,
            steps: 400,
            batch_size: 64,
            core_model: CoreModelChoice::Flow,
            ..FlowOptions::default()
        },
        ..FitOptions::default()
    };
    let singles: Vec<f64> = (1..=3)
        .map(|seed| {
            let batch = MatrixBatch::from_c_order(&train.data.data, count, m, n).unwrap();
            mmd_of(
                &Model::fit(&batch, &opts(seed)).unwrap(),
                fresh,
                count,
                m,
                n,
            )
        })
        .collect();
    let fits = fit_sharded(&train.data.data, None, count, m, n, 2, &opts(1), None);
    let models: Vec<Model> = fits.into_iter().map(|f| f.unwrap()).collect();
    // Every participant holds the same model: bitwise the same samples.
    assert_eq!(models[0].to_bytes(), models[1].to_bytes());
    let sharded = mmd_of(&models[0], fresh, count, m, n);
    let worst = singles.iter().cloned().fold(f64::MIN, f64::max);
    println!("MMD^2 to fresh data: single-process fits {singles:?}, 2 shards {sharded:.3e}");
    assert!(
        sharded <= 2.0 * worst.max(1e-4),
        "sharded {sharded} vs single {singles:?}"
    );
}
