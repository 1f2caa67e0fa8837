//! Latency of `Model::sample` and `Model::log_prob` for small counts (one
//! matrix per call, as a simulator draws them), with the time the network's
//! weight traffic needs at the measured L2 read bandwidth beside it.
//!
//! ```text
//! cargo run --release --example sample_latency -- --size 128 --rank 8 --flow-dim 12 \
//!     --hidden 256 --counts 1,4,16,1000
//! ```
//!
//! The model is fitted once on a planted low-rank set of `--size` square
//! matrices with `--rank` x `--rank` cores (a forced flow on the leading
//! `--flow-dim` components, `--flow-steps` optimiser steps: the timing does
//! not depend on how well the flow is trained) and cached in `--model`.
//!
//! Reported per count: the median time per call over `--repeats` runs of at
//! least `--min-ms` each (wall time, and the thread's CPU time, which
//! leaves out the time other processes held the core) of `Model::sample`
//! and of the core model's sampler alone (`cores_*`: no decoding to
//! matrices, the work a flow library's sampler does), the network's FLOP
//! rate (`2 NFE macs` per sample, the same count as the PyTorch peer) and,
//! for count = 1, the ratio of the CPU time to the weight-traffic bound
//! `NFE x weight bytes / L2 bandwidth` (bandwidth in CPU time too). The L2 figure is
//! the read rate of a buffer the size of the weights, swept repeatedly with
//! the widest loads available, and the compute peak is the rate of a
//! single-thread f32 faer GEMM (512 x 512 x 512), both measured in the same
//! process. Output: one JSON line on stdout.

use coreflow::core_model::{CoreModelChoice, FlowOptions};
use coreflow::datasets::{planted_low_rank, CoreDistribution, PlantedSpec};
use coreflow::flow::network::VelocityNet;
use coreflow::flow::ode::SolverOptions;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model};
use std::hint::black_box;
use std::time::Instant;

struct Args {
    size: usize,
    rank: usize,
    flow_dim: usize,
    hidden: usize,
    layers: usize,
    flow_steps: usize,
    counts: Vec<usize>,
    repeats: usize,
    min_ms: f64,
    model: String,
    log_prob: bool,
}

fn parse() -> Args {
    let mut a = Args {
        size: 128,
        rank: 8,
        flow_dim: 12,
        hidden: 256,
        layers: 3,
        flow_steps: 300,
        counts: vec![1, 4, 16, 1000],
        repeats: 5,
        min_ms: 200.0,
        model: String::new(),
        log_prob: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k}: missing value"));
        match k.as_str() {
            "--size" => a.size = v().parse().unwrap(),
            "--rank" => a.rank = v().parse().unwrap(),
            "--flow-dim" => a.flow_dim = v().parse().unwrap(),
            "--hidden" => a.hidden = v().parse().unwrap(),
            "--layers" => a.layers = v().parse().unwrap(),
            "--flow-steps" => a.flow_steps = v().parse().unwrap(),
            "--counts" => a.counts = v().split(',').map(|c| c.parse().unwrap()).collect(),
            "--repeats" => a.repeats = v().parse().unwrap(),
            "--min-ms" => a.min_ms = v().parse().unwrap(),
            "--model" => a.model = v(),
            "--no-log-prob" => a.log_prob = false,
            _ => panic!("unknown argument {k}"),
        }
    }
    if a.model.is_empty() {
        a.model = format!(
            "/tmp/coreflow_latency_{}_{}_{}_{}_{}.cfm",
            a.size, a.rank, a.flow_dim, a.hidden, a.layers
        );
    }
    a
}

fn model(a: &Args) -> Model {
    if let Ok(m) = Model::load(&a.model) {
        return m;
    }
    let n = 400;
    let mut spec = PlantedSpec::new(n, a.size, a.size, a.rank, a.rank, 7);
    spec.core = CoreDistribution::Mixture {
        components: 4,
        spread: 0.3,
    };
    spec.noise = 1e-3;
    let p = planted_low_rank(&spec).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, n, a.size, a.size).unwrap();
    let opts = FitOptions {
        rank_rows: a.rank,
        rank_cols: a.rank,
        threads: 1,
        seed: 3,
        flow: FlowOptions {
            core_model: CoreModelChoice::Flow,
            hidden: a.hidden,
            layers: a.layers,
            flow_energy: 1.0,
            flow_noise_gap: 0.0,
            flow_max_dim: a.flow_dim,
            steps: a.flow_steps,
            moment_samples: 400,
            threads: 1,
            ..FlowOptions::default()
        },
        ..FitOptions::default()
    };
    let m = Model::fit(&batch, &opts).unwrap();
    m.save(&a.model).unwrap();
    m
}

/// Median seconds per call of `f`, each repeat running for `min_ms`.
fn time(repeats: usize, min_ms: f64, f: impl FnMut()) -> f64 {
    time_both(repeats, min_ms, f).0
}

/// CPU time of the calling thread in seconds (Linux: the first field of
/// `/proc/thread-self/schedstat`, nanoseconds on the CPU), if available.
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Median wall and thread-CPU seconds per call of `f` (CPU time excludes
/// the time other processes held the core, which a shared machine adds to
/// the wall time; NaN where unavailable).
fn time_both(repeats: usize, min_ms: f64, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..repeats {
        let (t, c0) = (Instant::now(), thread_cpu());
        let mut calls = 0usize;
        while t.elapsed().as_secs_f64() * 1e3 < min_ms || calls == 0 {
            f();
            calls += 1;
        }
        wall.push(t.elapsed().as_secs_f64() / calls as f64);
        cpu.push(match (c0, thread_cpu()) {
            (Some(a), Some(b)) => (b - a) / calls as f64,
            _ => f64::NAN,
        });
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (med(wall), med(cpu))
}

/// Bytes per second of repeated reads of a `bytes` buffer (sum of every
/// value, eight independent accumulators of the widest vectors available).
/// Wall and CPU time rates (see [`time_both`]).
fn read_bandwidth(bytes: usize, repeats: usize, min_ms: f64) -> (f64, f64) {
    let buf: Vec<f32> = (0..bytes / 4).map(|i| (i % 7) as f32).collect();
    let (wall, cpu) = time_both(repeats, min_ms, || {
        black_box(sum(black_box(&buf)));
    });
    (bytes as f64 / wall, bytes as f64 / cpu)
}

/// FLOP per second of a single-thread f32 faer GEMM, `n x n` by `n x n`,
/// in wall and CPU time.
fn gemm_peak(n: usize, repeats: usize, min_ms: f64) -> (f64, f64) {
    use faer::{Accum, Mat, Par};
    let a = Mat::<f32>::from_fn(n, n, |i, j| ((i * 3 + j) % 11) as f32 * 0.1);
    let b = Mat::<f32>::from_fn(n, n, |i, j| ((i + 5 * j) % 13) as f32 * 0.1);
    let mut c = Mat::<f32>::zeros(n, n);
    let (wall, cpu) = time_both(repeats, min_ms, || {
        faer::linalg::matmul::matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
            1.0,
            Par::Seq,
        );
        black_box(c[(0, 0)]);
    });
    let flop = 2.0 * (n * n * n) as f64;
    (flop / wall, flop / cpu)
}

fn sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
        return unsafe { sum_avx2(x) };
    }
    x.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 8];
    let chunks = x.chunks_exact(64);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(c.as_ptr().add(8 * j)));
        }
    }
    let mut lanes = [0f32; 8];
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    lanes.iter().sum::<f32>() + tail
}

fn main() {
    let a = parse();
    let t = Instant::now();
    let m = model(&a);
    eprintln!("model ready in {:.1} s", t.elapsed().as_secs_f64());
    let info = m.info();
    let net = m
        .core_model()
        .and_then(|c| c.net_config())
        .expect("a flow model");
    let opts = SolverOptions::default();
    let nfe = opts.evaluations().unwrap();
    let macs = net.macs();
    let weights = net.num_params();
    let flop_per_sample = 2.0 * (nfe * macs) as f64;
    let (rows, cols) = (info.rows, info.cols);
    let (l2, l2_cpu) = read_bandwidth(weights * 4, a.repeats, a.min_ms / 2.0);
    // The bound in CPU time: reads and samples both timed on the CPU.
    let l2_bound = if l2_cpu.is_finite() { l2_cpu } else { l2 };
    let bound = nfe as f64 * (weights * 4) as f64 / l2_bound;
    let (peak, peak_cpu) = gemm_peak(512, a.repeats, a.min_ms / 2.0);
    // The row kernels' instruction set on this machine (a network of the
    // same shape makes the same choice).
    let kernel = VelocityNet::<f32>::new(net, 0)
        .ok()
        .and_then(|n| n.row_kernel())
        .unwrap_or("none");
    let mut results = Vec::new();
    for &count in &a.counts {
        let mut out = vec![0.0; count * rows * cols];
        let mut buf = MemBuffer::new(m.sample_scratch(count, &opts));
        let mut first = 0u64;
        let (secs, cpu) = time_both(a.repeats, a.min_ms, || {
            let mut ob = MatrixBatchMut::from_c_order(&mut out, count, rows, cols).unwrap();
            m.sample(&opts, 1, first, &mut ob, MemStack::new(&mut buf))
                .unwrap();
            first += count as u64;
        });
        // The cores alone (the flow solve, the Gaussian block and moment
        // matching, no decoding to matrices): the work the peer's
        // sampler times.
        let cm = m.core_model().expect("a core model");
        let mut cores = faer::Mat::<f64>::zeros(count, cm.dim());
        let mut cbuf = MemBuffer::new(cm.sample_scratch(count, &opts));
        let mut cfirst = 0u64;
        let (core_secs, core_cpu) = time_both(a.repeats, a.min_ms, || {
            cm.sample(&opts, 1, cfirst, cores.as_mut(), MemStack::new(&mut cbuf))
                .unwrap();
            cfirst += count as u64;
        });
        let mut r = format!(
            "{{\"count\":{count},\"sample_ms_per_call\":{:.4},\"sample_cpu_ms_per_call\":{:.4},\"sample_us_per_matrix\":{:.2},\"sample_gflops\":{:.2},\"cores_ms_per_call\":{:.4},\"cores_cpu_ms_per_call\":{:.4}",
            secs * 1e3,
            cpu * 1e3,
            secs * 1e6 / count as f64,
            flop_per_sample * count as f64 / secs / 1e9,
            core_secs * 1e3,
            core_cpu * 1e3
        );
        if count == 1 {
            r += &format!(
                ",\"weight_traffic_ms\":{:.4},\"cpu_ratio_to_traffic\":{:.2}",
                bound * 1e3,
                cpu / bound
            );
        }
        if a.log_prob {
            let mut lp = vec![0.0; count];
            let mut buf = MemBuffer::new(m.log_prob_scratch(count, &opts));
            let batch = MatrixBatch::from_c_order(&out, count, rows, cols).unwrap();
            let secs = time(a.repeats, a.min_ms, || {
                m.log_prob(&opts, &batch, &mut lp, None, MemStack::new(&mut buf))
                    .unwrap();
            });
            r += &format!(
                ",\"log_prob_ms_per_call\":{:.4},\"log_prob_us_per_matrix\":{:.2}",
                secs * 1e3,
                secs * 1e6 / count as f64
            );
        }
        r += "}";
        eprintln!("{r}");
        results.push(r);
    }
    println!(
        "{{\"rows\":{rows},\"cols\":{cols},\"core_dim\":{},\"flow_dim\":{},\"hidden\":{},\"layers\":{},\"time_freqs\":{},\"nfe\":{nfe},\"macs_per_eval\":{macs},\"weight_bytes\":{},\"l2_read_gbs\":{:.1},\"l2_read_cpu_gbs\":{:.1},\"gemm_peak_gflops\":{:.1},\"gemm_peak_cpu_gflops\":{:.1},\"row_kernel\":\"{kernel}\",\"results\":[{}]}}",
        m.core_dim(),
        net.dim,
        net.hidden,
        net.layers,
        net.time_freqs,
        weights * 4,
        l2 / 1e9,
        l2_cpu / 1e9,
        peak / 1e9,
        peak_cpu / 1e9,
        results.join(",")
    );
}
