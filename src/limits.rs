//! Caps on the options and the memory a call may ask for.
//!
//! Every option a host passes is bounded by what a machine can do, so that
//! no accepted value makes a call ask for terabytes (which would abort the
//! host when the allocation fails) or run for centuries:
//!
//! | option | cap |
//! |---|---|
//! | `threads` | clamped to [`MAX_THREADS`] (more gives no speed-up) |
//! | `subspace_max_iter`, `completion_max_iter` | [`MAX_ITERATIONS`] |
//! | `flow_steps` | [`MAX_FLOW_STEPS`] |
//! | `flow_hidden` | [`MAX_FLOW_HIDDEN`] |
//! | `flow_layers` | [`MAX_FLOW_LAYERS`] |
//! | `flow_time_freqs` | [`MAX_FLOW_TIME_FREQS`] |
//! | `batch_size` | [`MAX_BATCH_SIZE`] |
//! | network weights `(k + 2 f) h + (L - 1) h^2 + h k` | [`MAX_FLOW_PARAMETERS`] |
//! | ODE `steps` of sample and log-prob | [`MAX_SOLVER_STEPS`] |
//!
//! Within the caps, the memory a fit needs still grows with the data and
//! the options. Before it allocates, a fit estimates its peak (the copies
//! of the data, the Gram matrices, the network, its optimiser state and
//! activations) and reserves that much once, fallibly (`reserve_probe`):
//! a request the machine cannot serve ends in `ErrorKind::OutOfMemory`
//! (`COREFLOW_ERR_OUT_OF_MEMORY`) with nothing allocated, instead of an
//! abort half-way through.
//!
//! [`MAX_THREADS`]: crate::limits::MAX_THREADS
//! [`MAX_ITERATIONS`]: crate::limits::MAX_ITERATIONS
//! [`MAX_FLOW_STEPS`]: crate::limits::MAX_FLOW_STEPS
//! [`MAX_FLOW_HIDDEN`]: crate::limits::MAX_FLOW_HIDDEN
//! [`MAX_FLOW_LAYERS`]: crate::limits::MAX_FLOW_LAYERS
//! [`MAX_FLOW_TIME_FREQS`]: crate::limits::MAX_FLOW_TIME_FREQS
//! [`MAX_BATCH_SIZE`]: crate::limits::MAX_BATCH_SIZE
//! [`MAX_FLOW_PARAMETERS`]: crate::limits::MAX_FLOW_PARAMETERS
//! [`MAX_SOLVER_STEPS`]: crate::limits::MAX_SOLVER_STEPS

use crate::error::{Error, Result};
use crate::model::FitOptions;

/// Most worker threads a call starts; larger `threads` values are clamped.
pub const MAX_THREADS: usize = 256;
/// Largest iteration limit of the subspace refinement and of the completion.
pub const MAX_ITERATIONS: usize = 1_000_000;
/// Largest number of optimiser steps of the flow.
pub const MAX_FLOW_STEPS: usize = 100_000_000;
/// Widest hidden layer of the velocity network.
pub const MAX_FLOW_HIDDEN: usize = 16_384;
/// Most hidden layers of the velocity network.
pub const MAX_FLOW_LAYERS: usize = 64;
/// Most sinusoidal time frequencies of the velocity network.
pub const MAX_FLOW_TIME_FREQS: usize = 4_096;
/// Largest minibatch of flow training.
pub const MAX_BATCH_SIZE: usize = 1 << 20;
/// Most weights of the velocity network (2^27: 1 GiB per copy in f64).
pub const MAX_FLOW_PARAMETERS: usize = 1 << 27;
/// Most fixed steps of an ODE solve in sampling and scoring.
pub const MAX_SOLVER_STEPS: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::*;

    #[test]
    fn the_header_states_the_caps() {
        assert_eq!(COREFLOW_MAX_THREADS as usize, MAX_THREADS);
        assert_eq!(COREFLOW_MAX_ITERATIONS as usize, MAX_ITERATIONS);
        assert_eq!(COREFLOW_MAX_FLOW_STEPS as usize, MAX_FLOW_STEPS);
        assert_eq!(COREFLOW_MAX_FLOW_HIDDEN as usize, MAX_FLOW_HIDDEN);
        assert_eq!(COREFLOW_MAX_FLOW_LAYERS as usize, MAX_FLOW_LAYERS);
        assert_eq!(COREFLOW_MAX_FLOW_TIME_FREQS as usize, MAX_FLOW_TIME_FREQS);
        assert_eq!(COREFLOW_MAX_BATCH_SIZE as usize, MAX_BATCH_SIZE);
        assert_eq!(COREFLOW_MAX_FLOW_PARAMETERS as usize, MAX_FLOW_PARAMETERS);
        assert_eq!(COREFLOW_MAX_SOLVER_STEPS as usize, MAX_SOLVER_STEPS);
    }
}

/// How option names are spelled in messages.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Naming {
    /// Rust field paths (`opts.flow.hidden`).
    Rust,
    /// C struct fields (`opts->flow_hidden`).
    C,
}

/// Checks every bounded option of a fit against its cap (see the module
/// documentation); `naming` picks the spelling of the field in the message.
pub(crate) fn check_fit_options(opts: &FitOptions, naming: Naming) -> Result<()> {
    let f = &opts.flow;
    let caps: [(&str, &str, usize, usize); 7] = [
        (
            "opts.subspace_max_iter",
            "opts->subspace_max_iter",
            opts.subspace_max_iter,
            MAX_ITERATIONS,
        ),
        (
            "opts.completion_max_iter",
            "opts->completion_max_iter",
            opts.completion_max_iter,
            MAX_ITERATIONS,
        ),
        (
            "opts.flow.steps",
            "opts->flow_steps",
            f.steps,
            MAX_FLOW_STEPS,
        ),
        (
            "opts.flow.hidden",
            "opts->flow_hidden",
            f.hidden,
            MAX_FLOW_HIDDEN,
        ),
        (
            "opts.flow.layers",
            "opts->flow_layers",
            f.layers,
            MAX_FLOW_LAYERS,
        ),
        (
            "opts.flow.time_freqs",
            "opts->flow_time_freqs",
            f.time_freqs,
            MAX_FLOW_TIME_FREQS,
        ),
        (
            "opts.flow.batch_size",
            "opts->batch_size",
            f.batch_size,
            MAX_BATCH_SIZE,
        ),
    ];
    for (rust, c, value, cap) in caps {
        if value > cap {
            let name = if naming == Naming::C { c } else { rust };
            return Err(Error::invalid(format!(
                "{name}: {value} exceeds the maximum {cap}"
            )));
        }
    }
    // Without the block size k, which the fit chooses later, the weights
    // between hidden layers and the time embedding already bound the size.
    let params = flow_parameters(0, f.hidden, f.layers, f.time_freqs);
    if params > MAX_FLOW_PARAMETERS {
        let name = if naming == Naming::C {
            "opts->flow_hidden"
        } else {
            "opts.flow.hidden"
        };
        return Err(Error::invalid(format!(
            "{name}: {} layers of width {} hold {params} weights, more than the maximum {MAX_FLOW_PARAMETERS}",
            f.layers, f.hidden
        )));
    }
    Ok(())
}

/// Weights of a velocity network on `k` coordinates: input (k values and
/// 2 f time features) to h, L - 1 hidden-to-hidden layers, h to k.
/// Saturates instead of wrapping.
pub(crate) fn flow_parameters(k: usize, hidden: usize, layers: usize, time_freqs: usize) -> usize {
    let input = k.saturating_add(time_freqs.saturating_mul(2));
    input
        .saturating_mul(hidden)
        .saturating_add(
            layers
                .saturating_sub(1)
                .saturating_mul(hidden.saturating_mul(hidden)),
        )
        .saturating_add(hidden.saturating_mul(k))
}

/// An upper estimate, in bytes, of the peak memory of fitting `count`
/// matrices of `rows x cols` with `opts` (saturating).
pub(crate) fn fit_bytes_estimate(
    count: usize,
    rows: usize,
    cols: usize,
    opts: &FitOptions,
    masked: bool,
) -> usize {
    const F64: usize = std::mem::size_of::<f64>();
    let entries = count.saturating_mul(rows).saturating_mul(cols);
    // Masked fits keep a completed copy and its working copy; complete
    // data are read in place.
    let data = if masked {
        entries.saturating_mul(2 * F64 + 1)
    } else {
        0
    };
    // Gram matrices, eigendecompositions and their workspaces.
    let grams = rows
        .saturating_mul(rows)
        .saturating_add(cols.saturating_mul(cols))
        .saturating_mul(4 * F64);
    // Cores: at most rows x cols values per matrix, a few copies.
    let r = if opts.rank_rows == 0 {
        rows
    } else {
        opts.rank_rows
    };
    let s = if opts.rank_cols == 0 {
        cols
    } else {
        opts.rank_cols
    };
    let d = r.saturating_mul(s);
    let cores = count.saturating_mul(d).saturating_mul(3 * F64);
    let f = &opts.flow;
    let flow = if f.steps > 0 {
        let k = match f.flow_max_dim {
            0 => d,
            cap => d.min(cap),
        };
        // Weights, gradient, two moments, moving average and a copy for
        // each precision; activations of a minibatch in every layer.
        let weights = flow_parameters(k, f.hidden, f.layers, f.time_freqs).saturating_mul(8 * F64);
        let activations = f
            .batch_size
            .saturating_mul(f.hidden.saturating_add(k))
            .saturating_mul(f.layers.saturating_add(2))
            .saturating_mul(4 * F64);
        weights.saturating_add(activations)
    } else {
        0
    };
    data.saturating_add(grams)
        .saturating_add(cores)
        .saturating_add(flow)
}

/// An upper estimate, in bytes, of the peak memory of scoring `real_count`
/// against `generated_count` matrices of `rows x cols` (covariances, a
/// flat copy of both sets, the kernel matrix of the MMD), saturating.
pub(crate) fn metrics_bytes_estimate(
    real_count: usize,
    generated_count: usize,
    rows: usize,
    cols: usize,
) -> usize {
    let count = real_count.saturating_add(generated_count);
    let grams = rows
        .saturating_mul(rows)
        .saturating_add(cols.saturating_mul(cols))
        .saturating_mul(4);
    let copies = count
        .saturating_mul(rows.saturating_mul(cols))
        .saturating_mul(2);
    let kernel = count.saturating_mul(count);
    grams
        .saturating_add(copies)
        .saturating_add(kernel)
        .saturating_mul(std::mem::size_of::<f64>())
}

/// Reserves `bytes` once, fallibly, and releases them: `ErrorKind::OutOfMemory`
/// when the allocator refuses. `what` says what needs the memory.
pub(crate) fn reserve_probe(bytes: usize, what: &str) -> Result<()> {
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| {
        Error::out_of_memory(format!(
            "{what}: needs about {:.1} GB, more than can be allocated",
            bytes as f64 / 1e9
        ))
    })
}

/// A zero-filled vector of `len` values, fallibly: `ErrorKind::OutOfMemory`
/// naming `what` when the allocation fails.
pub fn try_zeroed<T: Copy + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::out_of_memory(format!(
            "{what}: {len} values of {} bytes cannot be allocated",
            std::mem::size_of::<T>()
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}
