//! The hot paths of the flow module do not allocate: a training step, core
//! sampling and core log-densities, once their workspace exists.
//!
//! A counting global allocator counts the allocations made by the current
//! thread while counting is switched on. Each path runs once first (faer's
//! GEMM keeps a per-thread packing buffer that is created on first use), then
//! is counted.

use coreflow::core_model::{CoreModel, CoreModelChoice, FlowOptions};
use coreflow::flow::{
    Coupling, Divergence, NetConfig, Solver, SolverOptions, TrainOptions, Trainer,
};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // try_with: the thread-locals may be gone during thread teardown.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ON.with(|on| on.set(true));
    f();
    ON.with(|on| on.set(false));
    COUNT.with(|c| c.get())
}

fn data(n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, j| {
        let a = (i * 7 + j * 3) as f64 * 0.37;
        a.sin() * (1.0 + j as f64) + if i % 3 == 0 { 2.0 } else { -1.0 }
    })
}

#[test]
fn training_steps_do_not_allocate() {
    let x = data(300, 5);
    let config = NetConfig {
        dim: 5,
        hidden: 64,
        layers: 3,
        time_freqs: 8,
    };
    for coupling in [Coupling::Independent, Coupling::MinibatchOt] {
        let opts = TrainOptions {
            steps: 10,
            batch_size: 64,
            coupling,
            clip_norm: 1.0,
            weight_decay: 1e-4,
            ..Default::default()
        };
        let mut trainer = Trainer::<f32>::new(config, x.as_ref(), &opts, None, Par::Seq).unwrap();
        trainer.step().unwrap();
        let n = allocations(|| {
            for _ in 0..3 {
                trainer.step().unwrap();
            }
        });
        assert_eq!(n, 0, "{coupling:?}: {n} allocations in 3 training steps");
    }
}

#[test]
fn sampling_and_log_densities_do_not_allocate() {
    let x = data(200, 6);
    let base = FlowOptions {
        hidden: 32,
        layers: 2,
        time_freqs: 4,
        steps: 20,
        flow_energy: 0.9,
        moment_samples: 100,
        holdout_fraction: 0.0,
        threads: 1,
        ..Default::default()
    };
    let flow = CoreModel::fit(x.as_ref(), &base, &mut |_, _, _| true).unwrap();
    assert!(flow.flow_dim() > 0 && flow.flow_dim() < 6);
    let gauss = CoreModel::fit(
        x.as_ref(),
        &FlowOptions {
            core_model: CoreModelChoice::Gaussian,
            ..base
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    // A network narrower than twice the flow block: fixed-step sampling
    // runs in the network's hidden coordinates.
    let narrow = CoreModel::fit(
        x.as_ref(),
        &FlowOptions {
            hidden: 4,
            flow_energy: 0.99,
            ..base
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    assert!(2 * narrow.flow_dim() > 4, "flow dim {}", narrow.flow_dim());
    let solvers = [
        SolverOptions {
            solver: Solver::Euler,
            steps: 5,
            ..Default::default()
        },
        SolverOptions {
            solver: Solver::Heun,
            steps: 5,
            ..Default::default()
        },
        SolverOptions::default(),
        SolverOptions {
            solver: Solver::Dopri5,
            ..Default::default()
        },
        SolverOptions {
            divergence: Divergence::Hutchinson { seed: 1 },
            ..Default::default()
        },
    ];
    // 300: more than one sampling chunk (batched products); 1 and 5: the
    // row kernels of small batches.
    for (model, count) in [
        (&flow, 300),
        (&flow, 1),
        (&flow, 5),
        (&gauss, 300),
        (&narrow, 300),
        (&narrow, 1),
    ] {
        for s in &solvers {
            let mut out = Mat::<f64>::zeros(count, 6);
            let mut mem = MemBuffer::new(model.sample_scratch(count, s));
            model
                .sample(s, 1, 0, out.as_mut(), MemStack::new(&mut mem))
                .unwrap();
            let n = allocations(|| {
                model
                    .sample(s, 2, 100, out.as_mut(), MemStack::new(&mut mem))
                    .unwrap();
            });
            assert_eq!(
                n,
                0,
                "{:?} sample {count} {:?}: {n} allocations",
                model.kind(),
                s
            );

            let mut lp = vec![0.0; count];
            let mut mem = MemBuffer::new(model.log_prob_scratch(count, s));
            model
                .log_prob(s, out.as_ref(), &mut lp, MemStack::new(&mut mem))
                .unwrap();
            let n = allocations(|| {
                model
                    .log_prob(s, out.as_ref(), &mut lp, MemStack::new(&mut mem))
                    .unwrap();
            });
            assert_eq!(
                n,
                0,
                "{:?} log_prob {count} {:?}: {n} allocations",
                model.kind(),
                s
            );
        }
    }
}

#[test]
fn small_batch_solves_do_not_allocate() {
    use coreflow::flow::ode::{integrate, integrate_scratch};
    use coreflow::flow::small::SMALL_ROWS;
    use coreflow::flow::VelocityNet;
    let config = NetConfig {
        dim: 12,
        hidden: 256,
        layers: 3,
        time_freqs: 16,
    };
    let net = VelocityNet::<f32>::new(config, 3).unwrap();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(net.has_row_kernels());
    }
    for solver in [Solver::Euler, Solver::Rk4, Solver::Dopri5] {
        let opts = SolverOptions {
            solver,
            steps: 4,
            ..Default::default()
        };
        for rows in [1, 3, SMALL_ROWS] {
            let mut x = data(rows, 12);
            let mut mem = MemBuffer::new(integrate_scratch(&net, rows, &opts));
            let n = allocations(|| {
                integrate(&net, &opts, 0.0, 1.0, x.as_mut(), MemStack::new(&mut mem)).unwrap();
            });
            assert_eq!(n, 0, "{solver:?} on {rows} rows: {n} allocations");
        }
    }
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations(|| {
        let v = vec![1u8; 100];
        std::hint::black_box(&v);
    });
    assert_eq!(n, 1);
}
