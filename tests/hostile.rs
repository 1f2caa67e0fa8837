//! Hostile input through the C ABI, in process: crafted and mutated model
//! files with correct checksums, and views and options of every size. Every
//! call must return `COREFLOW_OK` with finite outputs, or an error with its
//! outputs untouched; no panic may reach the boundary (see
//! `hostile_probe`).
//!
//! `COREFLOW_PROBE_CASES=N` sets the number of mutated model images and of
//! view/option cases (default 300 each); the figures of the long run in
//! the README come from `COREFLOW_PROBE_CASES=500000`.

mod hostile_probe;

use coreflow::ffi::*;
use hostile_probe::{mutated, reseal, sections, Fixture, Rng, Stats};

fn cases() -> u64 {
    std::env::var("COREFLOW_PROBE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// The image with the first value of section `tag` (at `index`) replaced.
fn crafted(fx: &Fixture, tag: &[u8; 4], index: usize, value: f64) -> Vec<u8> {
    let mut img = fx.image.clone();
    let (_, start, _) = sections(&img)
        .into_iter()
        .find(|(t, _, _)| t == tag)
        .expect("section present");
    let at = start + 8 * index;
    img[at..at + 8].copy_from_slice(&value.to_le_bytes());
    reseal(&mut img);
    img
}

fn loads(img: &[u8]) -> coreflow_status {
    let mut m = std::ptr::null_mut();
    let st = unsafe { coreflow_model_from_bytes(img.as_ptr(), img.len(), &mut m) };
    unsafe { coreflow_model_free(m) };
    st
}

#[test]
fn crafted_model_files_with_correct_checksums_are_refused() {
    let fx = Fixture::new();
    assert_eq!(loads(&fx.image), COREFLOW_OK);
    // The finding: U holding 1.7e308 loaded, and sampling returned OK with
    // NaN and infinity.
    for (tag, index, value) in [
        (b"BASU", 0, 1.7e308),
        (b"BASU", 3, 2.0),
        (b"BASV", 1, -1e200),
        (b"BASV", 0, 0.0),
        (b"MEAN", 5, 1e300),
        (b"PRIO", 0, 1e200),
    ] {
        let img = crafted(&fx, tag, index, value);
        assert_eq!(
            loads(&img),
            COREFLOW_ERR_FORMAT,
            "{} [{index}] = {value:e} loaded",
            String::from_utf8_lossy(tag)
        );
    }
    // Whatever loads works: every output finite, or a refusal.
    let mut stats = Stats::default();
    let core_len = sections(&fx.image)
        .into_iter()
        .find(|(t, _, _)| t == b"CORE")
        .map(|(_, _, len)| len / 8)
        .unwrap();
    for index in (0..core_len).step_by(7) {
        for value in [1e300, -1e12, 0.0, 1e-300] {
            hostile_probe::model_image(
                &fx,
                &crafted(&fx, b"CORE", index, value),
                index as u64,
                &mut stats,
            );
        }
    }
    assert!(stats.loaded > 0 && stats.refused > 0, "{stats:?}");
}

#[test]
fn mutated_model_files_never_give_non_finite_output() {
    // A flow model and a mixture model: every leading-block parser.
    for (kind, seed) in [
        (COREFLOW_CORE_MODEL_FLOW, 0x5eed_1234_abcd_0001),
        (COREFLOW_CORE_MODEL_MIXTURE, 0x5eed_1234_abcd_0002),
    ] {
        let fx = Fixture::with_core_model(kind);
        let mut rng = Rng(seed);
        let mut stats = Stats::default();
        for k in 0..cases() {
            let img = mutated(&fx, &mut rng);
            hostile_probe::model_image(&fx, &img, k, &mut stats);
        }
        println!("mutated model files (core model {kind}): {stats:?}");
    }
}

#[test]
fn views_and_options_of_any_size_are_safe() {
    let fx = Fixture::new();
    let mut model = std::ptr::null_mut();
    assert_eq!(
        unsafe { coreflow_model_from_bytes(fx.image.as_ptr(), fx.image.len(), &mut model) },
        COREFLOW_OK
    );
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let mut stats = Stats::default();
    let mut input = [0u8; 96];
    for _ in 0..cases() {
        for b in input.iter_mut() {
            *b = rng.next() as u8;
        }
        hostile_probe::views_and_options(&fx, model, &input, &mut stats);
    }
    unsafe { coreflow_model_free(model) };
    println!("views and options: {stats:?}");
}

#[test]
fn a_gaussian_core_model_gives_finite_residuals_for_finite_input() {
    // The finding: a fitted Gaussian-core model returned OK with residual
    // NaN for an input of magnitude 1e155 (its squares overflow).
    let fx = Fixture::new();
    let mut o: coreflow_fit_options = unsafe { std::mem::zeroed() };
    unsafe { coreflow_fit_options_init_sized(&mut o, std::mem::size_of_val(&o)) };
    o.rank_rows = 2;
    o.rank_cols = 2;
    o.threads = 1;
    o.core_model = COREFLOW_CORE_MODEL_GAUSSIAN;
    let train = coreflow_matrices {
        data: fx.data.as_ptr(),
        mask: std::ptr::null(),
        count: hostile_probe::N,
        rows: hostile_probe::M,
        cols: hostile_probe::NC,
        sample_stride: (hostile_probe::M * hostile_probe::NC) as isize,
        row_stride: hostile_probe::NC as isize,
        col_stride: 1,
    };
    let mut model = std::ptr::null_mut();
    assert_eq!(unsafe { coreflow_fit(&train, &o, &mut model) }, COREFLOW_OK);
    let mut stats = Stats::default();
    for e in [0, 100, 150, 155, 200, 300, 307] {
        let x: Vec<f64> = fx.data[..3 * 48]
            .iter()
            .map(|v| v * 10f64.powi(e))
            .collect();
        hostile_probe::exercise(model, &x, std::ptr::null(), e as u64, &mut stats);
    }
    unsafe { coreflow_model_free(model) };
    assert!(stats.ok > 0, "{stats:?}");
}
