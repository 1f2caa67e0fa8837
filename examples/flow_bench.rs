//! Speed of flow-matching training and ODE sampling, side by side with the
//! PyTorch peer `shared/peers/torch_flow_bench.py` (same options, same
//! quantities, same FLOP estimates).
//!
//! ```text
//! cargo run --release --example flow_bench -- --dim 400 --hidden 256 --layers 3 \
//!     --batch 256 --steps 200 --warmup 20 --sample-count 1000 --solver rk4 --sample-steps 25
//! ```
//!
//! Training: optimiser steps per second of [`Trainer::step`] (f32 network,
//! Adam, fused weight EMA, batch drawn from a fixed standardised Gaussian
//! mixture of `--train-size` rows), median over `--repeats`. FLOP estimate
//! per step `6 B (d_in H + (L - 1) H^2 + H d)`, `d_in = d + 2 k`.
//!
//! Sampling: samples per second of a fixed-step Euler or RK4 solve from
//! `t = 0` to 1 of `--sample-count` states, processed the way the core model
//! samples (chunks of 256 rows on the calling thread; with `--threads T`, T
//! threads each integrate a contiguous part, as a host splits index ranges). FLOP estimate
//! `2 NFE (d_in H + (L - 1) H^2 + H d)` per sample.
//!
//! `--matmul-peak` adds the rate of a single-thread f32 faer GEMM
//! (`--peak-size`^3) measured in the same process.
//!
//! Output: progress on stderr, one JSON line on stdout.

use coreflow::flow::latent::{self, LatentMaps};
use coreflow::flow::{NetConfig, Solver, SolverOptions, TrainOptions, Trainer, VelocityNet};
use coreflow::rng;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, Par};
use std::time::Instant;

struct Args {
    dim: usize,
    hidden: usize,
    layers: usize,
    freqs: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    train_size: usize,
    mixture: usize,
    threads: usize,
    sample_count: usize,
    solver: String,
    sample_steps: usize,
    repeats: usize,
    skip_train: bool,
    seed: u64,
    matmul_peak: bool,
    peak_size: usize,
    chunk: usize,
    state_coordinates: bool,
}

fn parse() -> Args {
    let mut a = Args {
        dim: 400,
        hidden: 256,
        layers: 3,
        freqs: 16,
        batch: 256,
        steps: 200,
        warmup: 20,
        train_size: 1000,
        mixture: 8,
        threads: 1,
        sample_count: 1000,
        solver: "euler".into(),
        sample_steps: 100,
        repeats: 3,
        skip_train: false,
        seed: 0,
        matmul_peak: false,
        peak_size: 1024,
        chunk: 256,
        state_coordinates: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let key = argv[i].as_str();
        let mut val = || {
            i += 1;
            argv.get(i)
                .unwrap_or_else(|| panic!("{key} needs a value"))
                .clone()
        };
        match key {
            "--dim" => a.dim = val().parse().unwrap(),
            "--hidden" => a.hidden = val().parse().unwrap(),
            "--layers" => a.layers = val().parse().unwrap(),
            "--freqs" => a.freqs = val().parse().unwrap(),
            "--batch" => a.batch = val().parse().unwrap(),
            "--steps" => a.steps = val().parse().unwrap(),
            "--warmup" => a.warmup = val().parse().unwrap(),
            "--train-size" => a.train_size = val().parse().unwrap(),
            "--mixture" => a.mixture = val().parse().unwrap(),
            "--threads" => a.threads = val().parse().unwrap(),
            "--sample-count" => a.sample_count = val().parse().unwrap(),
            "--solver" => a.solver = val(),
            "--sample-steps" => a.sample_steps = val().parse().unwrap(),
            "--repeats" => a.repeats = val().parse().unwrap(),
            "--seed" => a.seed = val().parse().unwrap(),
            "--peak-size" => a.peak_size = val().parse().unwrap(),
            "--chunk" => a.chunk = val().parse().unwrap(),
            "--skip-train" => a.skip_train = true,
            "--state-coordinates" => a.state_coordinates = true,
            "--matmul-peak" => a.matmul_peak = true,
            "--help" | "-h" => {
                eprintln!("see the module documentation of examples/flow_bench.rs");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    a
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// A seeded Gaussian mixture, standardised per coordinate (as the peer).
fn target(a: &Args) -> Mat<f64> {
    let (d, n, c) = (a.dim, a.train_size, a.mixture);
    let mut r = rng::stream(a.seed, 1);
    let mut g = vec![0.0; d];
    let mut means = Mat::<f64>::zeros(c, d);
    let mut scales = Mat::<f64>::zeros(c, d);
    for k in 0..c {
        rng::fill_normal(&mut r, &mut g);
        for j in 0..d {
            means[(k, j)] = 3.0 * g[j];
            scales[(k, j)] = 0.3 + 0.7 * rng::uniform(&mut r);
        }
    }
    let mut x = Mat::<f64>::zeros(n, d);
    for i in 0..n {
        let k = rng::below(&mut r, c as u64) as usize;
        rng::fill_normal(&mut r, &mut g);
        for j in 0..d {
            x[(i, j)] = means[(k, j)] + scales[(k, j)] * g[j];
        }
    }
    for j in 0..d {
        let m = (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64;
        let s = ((0..n).map(|i| (x[(i, j)] - m).powi(2)).sum::<f64>() / (n - 1) as f64)
            .sqrt()
            .max(1e-12);
        for i in 0..n {
            x[(i, j)] = (x[(i, j)] - m) / s;
        }
    }
    x
}

fn par(threads: usize) -> Par {
    if threads <= 1 {
        Par::Seq
    } else {
        Par::rayon(threads)
    }
}

fn main() {
    let a = parse();
    let config = NetConfig {
        dim: a.dim,
        hidden: a.hidden,
        layers: a.layers,
        time_freqs: a.freqs,
    };
    let macs = config.macs() as f64;
    let mut json = vec![
        ("bench".to_string(), "\"coreflow_flow\"".to_string()),
        ("threads".into(), a.threads.to_string()),
        ("dim".into(), a.dim.to_string()),
        ("hidden".into(), a.hidden.to_string()),
        ("layers".into(), a.layers.to_string()),
        ("freqs".into(), a.freqs.to_string()),
        ("params".into(), config.num_params().to_string()),
        ("dtype".into(), "\"float32\"".into()),
    ];

    if !a.skip_train {
        let data = target(&a);
        let opts = TrainOptions {
            steps: usize::MAX / 2,
            batch_size: a.batch,
            learning_rate: 1e-3,
            seed: a.seed,
            ..Default::default()
        };
        let mut trainer = Trainer::<f32>::new(config, data.as_ref(), &opts, None, par(a.threads))
            .expect("trainer");
        let first = trainer.step().unwrap();
        for _ in 1..a.warmup {
            trainer.step().unwrap();
        }
        let mut rates = vec![];
        let mut last = first;
        for rep in 0..a.repeats {
            let t0 = Instant::now();
            for _ in 0..a.steps {
                last = trainer.step().unwrap();
            }
            let dt = t0.elapsed().as_secs_f64();
            rates.push(a.steps as f64 / dt);
            eprintln!(
                "train repeat {rep}: {:.2} steps/s, loss {last:.4}",
                rates[rep]
            );
        }
        let med = median(&rates);
        let flop = 6.0 * a.batch as f64 * macs;
        json.extend([
            ("batch".into(), a.batch.to_string()),
            ("steps".into(), a.steps.to_string()),
            ("warmup".into(), a.warmup.to_string()),
            ("ema".into(), "0.999".into()),
            ("train_steps_per_s".into(), format!("{med}")),
            ("train_steps_per_s_all".into(), format!("{rates:?}")),
            ("train_ms_per_step".into(), format!("{}", 1e3 / med)),
            ("train_flop_per_step".into(), format!("{flop}")),
            ("train_gflops".into(), format!("{}", flop * med / 1e9)),
            ("loss_first".into(), format!("{first}")),
            ("loss_last".into(), format!("{last}")),
        ]);
    }

    if a.sample_count > 0 {
        let net = VelocityNet::<f32>::new(config, a.seed).unwrap();
        let solver = match a.solver.as_str() {
            "euler" => Solver::Euler,
            "rk4" => Solver::Rk4,
            "heun" => Solver::Heun,
            s => panic!("unknown solver {s}"),
        };
        let opts = SolverOptions {
            solver,
            steps: a.sample_steps,
            ..Default::default()
        };
        let n = a.sample_count;
        let chunk = n.min(a.chunk);
        let mut x0 = Mat::<f64>::zeros(n, a.dim);
        let mut g = vec![0.0; a.dim];
        for i in 0..n {
            rng::fill_normal(&mut rng::stream(a.seed, i as u64), &mut g);
            for j in 0..a.dim {
                x0[(i, j)] = g[j];
            }
        }
        // Inference runs on the caller's threads: with T threads, T scoped
        // threads each integrate a contiguous part of the states with their
        // own workspace (how a host splits `first_index` ranges).
        let threads = a.threads.max(1);
        // The maps belong to the prepared model (built once, like at load).
        let maps = (!a.state_coordinates)
            .then(|| LatentMaps::for_net(&net))
            .flatten();
        let maps = maps.as_ref();
        let hidden_coords = maps.is_some() && LatentMaps::<f32>::pays(net.config(), &opts);
        let mut mems: Vec<MemBuffer> = (0..threads)
            .map(|_| MemBuffer::new(latent::integrate_scratch(&net, maps, chunk, &opts)))
            .collect();
        let run = |x: &mut Mat<f64>, opts: &SolverOptions, mems: &mut [MemBuffer]| {
            let part = n.div_ceil(threads);
            let mut rest = x.as_mut();
            std::thread::scope(|scope| {
                for mem in mems.iter_mut() {
                    let rows = part.min(rest.nrows());
                    if rows == 0 {
                        break;
                    }
                    let (mut mine, tail) = rest.split_at_row_mut(rows);
                    rest = tail;
                    let net = &net;
                    scope.spawn(move || {
                        let mut start = 0;
                        while start < rows {
                            let b = (rows - start).min(chunk);
                            latent::integrate(
                                net,
                                maps,
                                opts,
                                0.0,
                                1.0,
                                mine.rb_mut().subrows_mut(start, b),
                                MemStack::new(mem),
                            )
                            .unwrap();
                            start += b;
                        }
                    });
                }
            });
        };
        let warm = SolverOptions {
            steps: (a.sample_steps / 10).max(1),
            ..opts
        };
        let mut x = x0.clone();
        run(&mut x, &warm, &mut mems);
        let mut rates = vec![];
        for rep in 0..a.repeats {
            let mut x = x0.clone();
            let t0 = Instant::now();
            run(&mut x, &opts, &mut mems);
            let dt = t0.elapsed().as_secs_f64();
            rates.push(n as f64 / dt);
            eprintln!("sample repeat {rep}: {:.1} samples/s", rates[rep]);
            assert!(x.as_ref().norm_max().is_finite());
        }
        let med = median(&rates);
        let nfe = opts.evaluations().unwrap() as f64;
        let flop = 2.0 * nfe * macs;
        // Multiply-adds actually performed per sample.
        let c = net.config();
        let (k, h, l) = (c.dim as f64, c.hidden as f64, c.layers as f64);
        let done = if hidden_coords {
            2.0 * (2.0 * k * h + nfe * l * h * h)
        } else {
            2.0 * nfe * (k * h + (l - 1.0) * h * h + h * k)
        };
        json.extend([
            (
                "coordinates".into(),
                format!("\"{}\"", if hidden_coords { "hidden" } else { "state" }),
            ),
            ("sample_flop_done_per_sample".into(), format!("{done}")),
            ("sample_gflops_done".into(), format!("{}", done * med / 1e9)),
            ("sample_count".into(), n.to_string()),
            ("solver".into(), format!("\"{}\"", a.solver)),
            ("sample_steps".into(), a.sample_steps.to_string()),
            ("nfe".into(), format!("{nfe}")),
            ("sample_per_s".into(), format!("{med}")),
            ("sample_per_s_all".into(), format!("{rates:?}")),
            ("sample_seconds".into(), format!("{}", n as f64 / med)),
            ("sample_flop_per_sample".into(), format!("{flop}")),
            ("sample_gflops".into(), format!("{}", flop * med / 1e9)),
        ]);
    }

    if a.matmul_peak {
        let s = a.peak_size;
        let x = Mat::<f32>::from_fn(s, s, |i, j| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
        let y = Mat::<f32>::from_fn(s, s, |i, j| ((i * 13 + j * 29) % 89) as f32 / 89.0 - 0.5);
        let mut z = Mat::<f32>::zeros(s, s);
        let flop = 2.0 * (s * s * s) as f64;
        let reps = ((2e10 / flop) as usize).max(2);
        matmul(
            z.as_mut(),
            Accum::Replace,
            x.as_ref(),
            y.as_ref(),
            1.0,
            Par::Seq,
        );
        let mut rates = vec![];
        for _ in 0..a.repeats.max(1) {
            let t0 = Instant::now();
            for _ in 0..reps {
                matmul(
                    z.as_mut(),
                    Accum::Replace,
                    x.as_ref(),
                    y.as_ref(),
                    1.0,
                    Par::Seq,
                );
            }
            rates.push(flop * reps as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
        eprintln!("f32 matmul {s}^3: {:.1} GFLOP/s", median(&rates));
        json.extend([
            ("matmul_size".into(), s.to_string()),
            ("matmul_gflops".into(), format!("{}", median(&rates))),
        ]);
    }

    let body: Vec<String> = json.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
    println!("{{{}}}", body.join(", "));
}
