//! Hostile-input probes of the C ABI, shared by `tests/hostile.rs` (a short
//! run in the test suite, a long one with `COREFLOW_PROBE_CASES`) and the
//! fuzz target `fuzz/fuzz_targets/views_and_options.rs`.
//!
//! Every probe checks the library's promises for one input: no panic
//! crosses the boundary (`COREFLOW_ERR_INTERNAL` is a failure), a call that
//! returns `COREFLOW_OK` wrote only finite values, and a call that fails
//! left its outputs as they were. A violation panics with the case.
#![allow(dead_code)]

use coreflow::ffi::*;
use std::ffi::c_void;

/// Sizes of the fixture's matrices.
pub const N: usize = 40;
pub const M: usize = 8;
pub const NC: usize = 6;
const SENTINEL: f64 = -12345.0;
/// Doubles in the buffer that probed views address.
const BUF: usize = 4096;

/// Counters of a run.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    /// Inputs tried (model images, view and option combinations).
    pub inputs: u64,
    /// Library calls made.
    pub calls: u64,
    /// Calls that returned `COREFLOW_OK` (every output checked finite).
    pub ok: u64,
    /// Calls refused with an error status (outputs checked untouched).
    pub refused: u64,
    /// Model images that loaded.
    pub loaded: u64,
}

/// A fitted flow model, its file image and its training data.
pub struct Fixture {
    pub data: Vec<f64>,
    pub image: Vec<u8>,
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(2685821657736338717)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn view(data: *const f64, count: usize) -> coreflow_matrices {
    coreflow_matrices {
        data,
        mask: std::ptr::null(),
        count,
        rows: M,
        cols: NC,
        sample_stride: (M * NC) as isize,
        row_stride: NC as isize,
        col_stride: 1,
    }
}

fn view_mut(data: *mut f64, count: usize) -> coreflow_matrices_mut {
    coreflow_matrices_mut {
        data,
        count,
        rows: M,
        cols: NC,
        sample_stride: (M * NC) as isize,
        row_stride: NC as isize,
        col_stride: 1,
    }
}

impl Fixture {
    /// Fits a small flow model on low-rank data (one thread).
    pub fn new() -> Self {
        Self::with_core_model(COREFLOW_CORE_MODEL_FLOW)
    }

    /// The same data and options with another core model
    /// (`COREFLOW_CORE_MODEL_*`).
    pub fn with_core_model(core_model: coreflow_core_model) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut data = vec![0.0; N * M * NC];
        for i in 0..N {
            let (a, b) = (rng.uniform() - 0.5, rng.uniform() - 0.5);
            for r in 0..M {
                for c in 0..NC {
                    data[(i * M + r) * NC + c] =
                        a * (0.7 * r as f64).sin() * (0.5 * c as f64).cos()
                            + b * (0.3 * r as f64).cos()
                            + 0.01 * (rng.uniform() - 0.5);
                }
            }
        }
        let mut o: coreflow_fit_options = unsafe { std::mem::zeroed() };
        unsafe { coreflow_fit_options_init_sized(&mut o, std::mem::size_of_val(&o)) };
        o.rank_rows = 2;
        o.rank_cols = 2;
        o.threads = 1;
        o.flow_steps = 40;
        o.flow_hidden = 16;
        o.flow_layers = 2;
        o.batch_size = 16;
        o.center = 1;
        o.core_model = core_model;
        let train = view(data.as_ptr(), N);
        let mut model = std::ptr::null_mut();
        assert_eq!(unsafe { coreflow_fit(&train, &o, &mut model) }, COREFLOW_OK);
        let mut len = 0;
        unsafe { coreflow_model_to_bytes(model, std::ptr::null_mut(), 0, &mut len) };
        let mut image = vec![0u8; len];
        assert_eq!(
            unsafe { coreflow_model_to_bytes(model, image.as_mut_ptr(), len, &mut len) },
            COREFLOW_OK
        );
        unsafe { coreflow_model_free(model) };
        Fixture { data, image }
    }
}

fn last_error() -> String {
    unsafe { std::ffi::CStr::from_ptr(coreflow_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Records a call: OK needs every output finite, a failure every output
/// untouched; a panic caught at the boundary is always a failure.
fn judge(st: coreflow_status, outputs: &[&[f64]], what: &str, stats: &mut Stats) {
    stats.calls += 1;
    assert_ne!(
        st,
        COREFLOW_ERR_INTERNAL,
        "{what}: internal error: {}",
        last_error()
    );
    if st == COREFLOW_OK {
        stats.ok += 1;
        for o in outputs {
            if let Some(x) = o.iter().find(|x| !x.is_finite()) {
                panic!("{what}: COREFLOW_OK with the non-finite output {x}");
            }
        }
    } else {
        stats.refused += 1;
        for o in outputs {
            assert!(
                o.iter().all(|x| *x == SENTINEL),
                "{what}: failed ({st}: {}) after writing its output",
                last_error()
            );
        }
    }
}

/// A workspace for `count` matrices of every operation.
fn workspace(
    model: *const coreflow_model,
    count: usize,
    so: *const coreflow_sample_options,
) -> Vec<u8> {
    let mut most = 0;
    for op in [
        COREFLOW_OP_SAMPLE,
        COREFLOW_OP_ENCODE,
        COREFLOW_OP_DECODE,
        COREFLOW_OP_LOG_PROB,
        COREFLOW_OP_COMPLETE,
        COREFLOW_OP_IMPUTE,
    ] {
        let mut b = 0;
        if unsafe { coreflow_workspace_size(model, op, count, so, &mut b) } == COREFLOW_OK {
            most = most.max(b);
        }
    }
    vec![0u8; most]
}

/// Every inference call on `model` with `inputs` (C-order `count` matrices
/// of M x NC) and a mask pattern; each judged.
pub fn exercise(
    model: *const coreflow_model,
    inputs: &[f64],
    so: *const coreflow_sample_options,
    seed: u64,
    stats: &mut Stats,
) {
    let count = inputs.len() / (M * NC);
    let mut ws = workspace(model, count.max(1), so);
    let (wp, wb) = (ws.as_mut_ptr() as *mut c_void, ws.len());
    let mut info: coreflow_model_info = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of_val(&info);
    assert_eq!(
        unsafe { coreflow_model_get_info(model, &mut info) },
        COREFLOW_OK
    );
    if info.rows != M || info.cols != NC {
        return;
    }
    let d = info.core_dim;
    let input = view(inputs.as_ptr(), count);

    let mut out = vec![SENTINEL; count * M * NC];
    let mut ov = view_mut(out.as_mut_ptr(), count);
    let st = unsafe { coreflow_sample(model, so, seed, seed >> 7, &mut ov, wp, wb) };
    judge(st, &[&out], "sample", stats);

    let mut cores = vec![SENTINEL; count * d];
    let st = unsafe { coreflow_encode(model, &input, cores.as_mut_ptr(), wp, wb) };
    judge(st, &[&cores], "encode", stats);

    let mut fed = vec![0.0; count * d];
    let mut rng = Rng(seed | 1);
    let e = rng.below(620) as i32 - 310;
    for c in fed.iter_mut() {
        *c = (rng.uniform() - 0.5) * 10f64.powi(e);
    }
    let mut dec = vec![SENTINEL; count * M * NC];
    let mut dv = view_mut(dec.as_mut_ptr(), count);
    let st = unsafe { coreflow_decode(model, fed.as_ptr(), &mut dv, wp, wb) };
    judge(st, &[&dec], "decode", stats);

    let mut lp = vec![SENTINEL; count];
    let mut res = vec![SENTINEL; count];
    let st =
        unsafe { coreflow_log_prob(model, so, &input, lp.as_mut_ptr(), res.as_mut_ptr(), wp, wb) };
    judge(st, &[&lp, &res], "log_prob", stats);

    let mask: Vec<u8> = (0..inputs.len()).map(|k| (k % 3 != 0) as u8).collect();
    let mut partial = input;
    partial.mask = mask.as_ptr();
    let mut filled = vec![SENTINEL; count * M * NC];
    let mut fv = view_mut(filled.as_mut_ptr(), count);
    let st = unsafe { coreflow_complete(model, &partial, &mut fv, wp, wb) };
    judge(st, &[&filled], "complete", stats);

    let mut drawn = vec![SENTINEL; count * M * NC];
    let mut iv = view_mut(drawn.as_mut_ptr(), count);
    let st = unsafe { coreflow_impute(model, so, seed, seed >> 9, &partial, &mut iv, wp, wb) };
    judge(st, &[&drawn], "impute", stats);
}

/// Loads `image`; when it loads, exercises every call on it.
pub fn model_image(fx: &Fixture, image: &[u8], seed: u64, stats: &mut Stats) {
    stats.inputs += 1;
    let mut model = std::ptr::null_mut();
    let st = unsafe { coreflow_model_from_bytes(image.as_ptr(), image.len(), &mut model) };
    stats.calls += 1;
    assert!(
        matches!(st, COREFLOW_OK | COREFLOW_ERR_FORMAT | COREFLOW_ERR_VERSION),
        "from_bytes: status {st}: {}",
        last_error()
    );
    if st != COREFLOW_OK {
        assert!(model.is_null());
        stats.refused += 1;
        return;
    }
    stats.ok += 1;
    stats.loaded += 1;
    exercise(model, &fx.data[..4 * M * NC], std::ptr::null(), seed, stats);
    unsafe { coreflow_model_free(model) };
}

/// The sections of a model image: `(tag, payload start, payload length)`.
pub fn sections(image: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut out = Vec::new();
    let mut at = 16;
    while at + 12 <= image.len() - 4 {
        let tag: [u8; 4] = image[at..at + 4].try_into().unwrap();
        let len = u64::from_le_bytes(image[at + 4..at + 12].try_into().unwrap()) as usize;
        out.push((tag, at + 12, len));
        at += 12 + len;
    }
    out
}

/// Rewrites the checksum trailer so the image passes the CRC check.
pub fn reseal(image: &mut [u8]) {
    let n = image.len() - 4;
    let crc = crc32fast::hash(&image[..n]);
    image[n..].copy_from_slice(&crc.to_le_bytes());
}

/// A mutation of the fixture's image with a correct checksum: values in a
/// section's payload replaced by extreme, special or random numbers,
/// scaled, or bytes flipped.
pub fn mutated(fx: &Fixture, rng: &mut Rng) -> Vec<u8> {
    let mut img = fx.image.clone();
    let secs = sections(&img);
    let edits = 1 + rng.below(3);
    for _ in 0..edits {
        let (_, start, len) = secs[rng.below(secs.len() as u64) as usize];
        if len < 8 {
            continue;
        }
        let slot = start + 8 * rng.below((len / 8) as u64) as usize;
        let old = f64::from_le_bytes(img[slot..slot + 8].try_into().unwrap());
        let new = match rng.below(8) {
            0 => 1.7e308 * if rng.below(2) == 0 { 1.0 } else { -1.0 },
            1 => 10f64.powi(rng.below(616) as i32 - 308),
            2 => old * 10f64.powi(rng.below(40) as i32 - 20),
            3 => 0.0,
            4 => f64::from_bits(rng.next()),
            5 => old + 1e-3 * (rng.uniform() - 0.5),
            6 => -old,
            _ => {
                let b = slot + rng.below(8) as usize;
                img[b] ^= 1 << rng.below(8);
                continue;
            }
        };
        img[slot..slot + 8].copy_from_slice(&new.to_le_bytes());
    }
    reseal(&mut img);
    img
}

/// Reads the next `n` bytes of a fuzz input as a little-endian integer
/// (zeros past the end).
struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn take(&mut self, n: usize) -> u64 {
        let mut x = 0u64;
        for k in 0..n {
            let b = self.0.first().copied().unwrap_or(0);
            if !self.0.is_empty() {
                self.0 = &self.0[1..];
            }
            x |= (b as u64) << (8 * k);
        }
        x
    }
}

/// A size: small most of the time, else anything (including values whose
/// products overflow).
fn size(b: &mut Bytes) -> usize {
    match b.take(1) % 4 {
        0 => b.take(8) as usize,
        1 => 1usize << (b.take(1) % 64),
        _ => (b.take(1) % 12) as usize,
    }
}

fn stride(b: &mut Bytes) -> isize {
    match b.take(1) % 4 {
        0 => b.take(8) as isize,
        1 => -((b.take(1) % 64) as isize),
        _ => (b.take(2) % 128) as isize,
    }
}

/// One view-and-option case decoded from fuzz bytes: a view of arbitrary
/// sizes and strides into a buffer, data of an arbitrary magnitude (with
/// NaN or infinity sometimes), and sample options and fit options that
/// are either small or beyond their caps. A view that stays inside the
/// buffer is a valid host view; one whose sizes overflow must be refused;
/// one in between would address memory the host does not own and is
/// skipped (undefined behaviour of the host, not of the library).
pub fn views_and_options(
    fx: &Fixture,
    model: *const coreflow_model,
    input: &[u8],
    stats: &mut Stats,
) {
    stats.inputs += 1;
    let mut b = Bytes(input);
    let mut buf = vec![0.0f64; BUF];
    let e = (b.take(2) % 617) as i32 - 308;
    for (k, x) in buf.iter_mut().enumerate() {
        *x = fx.data[k % fx.data.len()] * 10f64.powi(e);
    }
    match b.take(1) % 16 {
        0 => buf[(b.take(2) as usize) % BUF] = f64::NAN,
        1 => buf[(b.take(2) as usize) % BUF] = f64::INFINITY,
        _ => {}
    }
    // Half the cases have the model's matrix size, and natural strides.
    let count = size(&mut b);
    let (rows, cols) = if b.take(1) % 2 == 0 {
        (M, NC)
    } else {
        (size(&mut b), size(&mut b))
    };
    let (ss, rs, cs) = match b.take(1) % 4 {
        0 => (rows.wrapping_mul(cols) as isize, cols as isize, 1),
        1 => (rows.wrapping_mul(cols) as isize, 1, rows as isize),
        _ => (stride(&mut b), stride(&mut b), stride(&mut b)),
    };
    let base = (b.take(2) as usize) % BUF;
    let layout = coreflow::Layout {
        count,
        rows,
        cols,
        sample_stride: ss,
        row_stride: rs,
        col_stride: cs,
    };
    // Three sizes of up to 2^64 overflow even i128: checked throughout.
    let limit = (isize::MAX / 8) as i128;
    let elements = (count as i128)
        .checked_mul(rows as i128)
        .and_then(|v| v.checked_mul(cols as i128));
    let overflowing = elements.is_none_or(|e| e > limit)
        || layout
            .offset_range()
            .is_some_and(|(lo, hi)| hi.checked_sub(lo).is_none_or(|w| w >= limit));
    let inside = !overflowing
        && layout.offset_range().is_none_or(|(lo, hi)| {
            (base as i128).checked_add(lo).is_some_and(|v| v >= 0)
                && (base as i128)
                    .checked_add(hi)
                    .is_some_and(|v| v < BUF as i128)
        });
    let op = b.take(1) % 6;
    let mut so: coreflow_sample_options = unsafe { std::mem::zeroed() };
    unsafe { coreflow_sample_options_init_sized(&mut so, std::mem::size_of_val(&so)) };
    so.solver = (b.take(1) % 5) as i32;
    so.steps = if b.take(1) % 8 == 0 {
        COREFLOW_MAX_SOLVER_STEPS + 1 + (b.take(4) as u32 % 1000)
    } else {
        1 + (b.take(1) % 20) as u32
    };
    so.rtol = 10f64.powi(-((b.take(1) % 12) as i32));
    so.atol = so.rtol;
    if !(inside || overflowing) {
        return;
    }
    // Valid but huge requests (stride-0 views of millions of matrices) are
    // legitimate work, not hostile input: the outputs of encode, log_prob
    // and decode are sized for 64 matrices, fits and metrics for small sets.
    let heavy = match op {
        1..=3 => count > 64,
        _ => count > 4096 || rows > 4096 || cols > 4096,
    };
    if inside && heavy {
        return;
    }
    let ptr = unsafe { buf.as_mut_ptr().add(base) };
    let cv = coreflow_matrices {
        data: ptr,
        mask: std::ptr::null(),
        count,
        rows,
        cols,
        sample_stride: ss,
        row_stride: rs,
        col_stride: cs,
    };
    let mut mv = coreflow_matrices_mut {
        data: ptr,
        count,
        rows,
        cols,
        sample_stride: ss,
        row_stride: rs,
        col_stride: cs,
    };
    let snapshot = buf.clone();
    let mut ws = workspace(model, count.min(64), &so);
    let (wp, wb) = (ws.as_mut_ptr() as *mut c_void, ws.len());
    let small = count.min(64);
    let mut lp = vec![SENTINEL; small];
    let mut cores = vec![SENTINEL; small * 4];
    let st = unsafe {
        match op {
            0 => coreflow_sample(model, &so, 7, 0, &mut mv, wp, wb),
            1 => coreflow_encode(model, &cv, cores.as_mut_ptr(), wp, wb),
            2 => coreflow_log_prob(
                model,
                &so,
                &cv,
                lp.as_mut_ptr(),
                std::ptr::null_mut(),
                wp,
                wb,
            ),
            3 => coreflow_decode(model, cores.as_ptr(), &mut mv, wp, wb),
            4 => {
                let mut res = coreflow_metrics_result {
                    struct_size: std::mem::size_of::<coreflow_metrics_result>(),
                    ..std::mem::zeroed()
                };
                let real = view(fx.data.as_ptr(), N);
                coreflow_metrics(&real, &cv, std::ptr::null(), &mut res)
            }
            _ => {
                let mut o: coreflow_fit_options = std::mem::zeroed();
                coreflow_fit_options_init_sized(&mut o, std::mem::size_of_val(&o));
                o.threads = if b.take(1) % 4 == 0 {
                    b.take(4) as u32
                } else {
                    1
                };
                o.rank_rows = (b.take(1) % 4) as u32;
                o.rank_cols = (b.take(1) % 4) as u32;
                let beyond = b.take(1) % 8;
                o.flow_steps = if beyond == 1 {
                    COREFLOW_MAX_FLOW_STEPS + 1
                } else {
                    10
                };
                o.flow_hidden = if beyond == 2 {
                    COREFLOW_MAX_FLOW_HIDDEN + 1
                } else {
                    8
                };
                o.flow_layers = if beyond == 3 {
                    COREFLOW_MAX_FLOW_LAYERS + 1
                } else {
                    1
                };
                o.flow_time_freqs = if beyond == 4 {
                    COREFLOW_MAX_FLOW_TIME_FREQS + 1
                } else {
                    4
                };
                o.subspace_max_iter = if beyond == 5 { u32::MAX } else { 5 };
                o.batch_size = if beyond == 6 { u32::MAX } else { 8 };
                o.completion_max_iter = if beyond == 7 { u32::MAX } else { 5 };
                // Every kind, and one value beyond them.
                o.core_model = (b.take(1) % 5) as i32;
                let mut out = std::ptr::null_mut();
                let st = coreflow_fit(&cv, &o, &mut out);
                if st == COREFLOW_OK {
                    assert!(
                        beyond == 0,
                        "fit accepted an option beyond its cap ({beyond})"
                    );
                    coreflow_model_free(out);
                } else {
                    assert!(out.is_null(), "fit wrote *out and failed");
                }
                st
            }
        }
    };
    if overflowing {
        assert!(
            st == COREFLOW_ERR_INVALID_ARGUMENT || st == COREFLOW_ERR_SHAPE,
            "op {op}: an overflowing view gave status {st}: {}",
            last_error()
        );
    }
    let same = buf
        .iter()
        .zip(&snapshot)
        .all(|(x, y)| x.to_bits() == y.to_bits());
    if st != COREFLOW_OK {
        assert!(same, "op {op}: failed ({st}) after writing its output");
    } else if snapshot.iter().all(|x| x.is_finite()) {
        assert!(
            buf.iter().all(|x| x.is_finite()),
            "op {op}: COREFLOW_OK with a non-finite output"
        );
    }
    judge(st, &[&lp, &cores], &format!("view/option op {op}"), stats);
}
