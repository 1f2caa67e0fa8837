//! The model file: exact round trips and robust loading of damaged data.

use coreflow::datasets::{mcar_mask, planted_low_rank, PlantedSpec};
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{ErrorKind, FitOptions, MatrixBatch, MatrixBatchMut, Model};

fn fitted(center: bool, masked: bool) -> (Model, Vec<f64>, Vec<u8>) {
    let mut spec = PlantedSpec::new(40, 40, 30, 3, 3, 51);
    spec.noise = 1e-2;
    let p = planted_low_rank(&spec).unwrap();
    let mask = mcar_mask(40, 40, 30, if masked { 0.3 } else { 0.0 }, 52).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, 40, 40, 30).unwrap();
    let batch = if masked {
        batch.with_mask(&mask).unwrap()
    } else {
        batch
    };
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        center,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    (Model::fit(&batch, &opts).unwrap(), p.data.data, mask)
}

/// Every output of the model on fixed inputs, as bits.
fn outputs(model: &Model, data: &[f64], mask: &[u8]) -> Vec<u64> {
    let (n, m, k) = (10, 40, 30);
    let batch = MatrixBatch::from_c_order(&data[..n * m * k], n, m, k).unwrap();
    let mut buf = MemBuffer::new(
        model
            .encode_scratch(n)
            .or(model.decode_scratch(n))
            .or(model.complete_scratch(n)),
    );
    let mut cores = vec![0.0; n * model.core_dim()];
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mut dec = vec![0.0; n * m * k];
    model
        .decode(
            &cores,
            &mut MatrixBatchMut::from_c_order(&mut dec, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let partial = batch.with_mask(&mask[..n * m * k]).unwrap();
    let mut comp = vec![0.0; n * m * k];
    model
        .complete(
            &partial,
            &mut MatrixBatchMut::from_c_order(&mut comp, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    cores
        .iter()
        .chain(&dec)
        .chain(&comp)
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn save_and_load_reproduce_every_output_bitwise() {
    for (center, masked) in [(false, false), (true, false), (true, true)] {
        let (model, data, _) = fitted(center, masked);
        let mask = mcar_mask(40, 40, 30, 0.3, 53).unwrap();
        let expect = outputs(&model, &data, &mask);
        let bytes = model.to_bytes();
        let back = Model::from_bytes(&bytes).unwrap();
        // Debug text: NaN fields (no flow, no missing data) compare equal there.
        assert_eq!(format!("{:?}", back.info()), format!("{:?}", model.info()));
        assert_eq!(outputs(&back, &data, &mask), expect);
        let path = std::env::temp_dir().join(format!(
            "coreflow-persist-{}-{center}-{masked}.cfm",
            std::process::id()
        ));
        model.save(&path).unwrap();
        let loaded = Model::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(outputs(&loaded, &data, &mask), expect);
        assert_eq!(loaded.to_bytes(), bytes, "re-serialization differs");
    }
}

fn rejected(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Format | ErrorKind::Version)
}

#[test]
fn every_bit_flip_and_truncation_is_rejected() {
    let (model, _, _) = fitted(true, false);
    let bytes = model.to_bytes();
    assert!(
        bytes.len() > 4096,
        "the model file should exceed 4 KiB for this test: {}",
        bytes.len()
    );
    let mut damaged = bytes.clone();
    // Every bit of the first 4 KiB, then every 97th bit of the rest.
    let bits = (0..4096 * 8).chain((4096 * 8..bytes.len() * 8).step_by(97));
    for bit in bits {
        damaged[bit / 8] ^= 1 << (bit % 8);
        match Model::from_bytes(&damaged) {
            Err(e) => assert!(rejected(e.kind()), "bit {bit}: {e}"),
            // A flip the checksum cannot see must still give a valid model.
            Ok(m) => assert_eq!(m.info().rows, 40, "bit {bit}"),
        }
        damaged[bit / 8] ^= 1 << (bit % 8);
    }
    for len in 0..4096.min(bytes.len()) {
        let err = Model::from_bytes(&bytes[..len]).unwrap_err();
        assert!(rejected(err.kind()), "length {len}: {err}");
    }
}

#[test]
fn a_future_version_is_refused_with_a_version_error() {
    let (model, _, _) = fitted(false, false);
    let mut bytes = model.to_bytes();
    bytes[8..12].copy_from_slice(&(coreflow::model::FORMAT_VERSION + 1).to_le_bytes());
    let err = Model::from_bytes(&bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version);
    assert!(err.message().contains("version"));
    // Version 1 (dense core prior and coordinate flow blocks) is no longer
    // read.
    assert_eq!(coreflow::model::FORMAT_VERSION, 6);
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let err = Model::from_bytes(&bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version);
    assert!(err.message().contains("version 1"), "{}", err.message());
    let err = Model::load("/nonexistent/dir/model.cfm").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().starts_with("path"));
}

/// Samples and log-densities of a model with a core model, as bits.
fn generative_outputs(model: &Model, data: &[f64]) -> Vec<u64> {
    use coreflow::flow::SolverOptions;
    let (n, m, k) = (12, 40, 30);
    let solver = SolverOptions::default();
    let mut buf = MemBuffer::new(
        model
            .sample_scratch(n, &solver)
            .or(model.log_prob_scratch(n, &solver)),
    );
    let mut draws = vec![0.0; n * m * k];
    model
        .sample(
            &solver,
            9,
            3,
            &mut MatrixBatchMut::from_c_order(&mut draws, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let batch = MatrixBatch::from_c_order(&data[..n * m * k], n, m, k).unwrap();
    let mut lp = vec![0.0; n];
    let mut res = vec![0.0; n];
    model
        .log_prob(
            &solver,
            &batch,
            &mut lp,
            Some(&mut res),
            MemStack::new(&mut buf),
        )
        .unwrap();
    draws
        .iter()
        .chain(&lp)
        .chain(&res)
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn every_core_model_kind_survives_save_and_load_bitwise() {
    use coreflow::core_model::{CoreModelChoice, CoreModelKind, FlowOptions};
    let mut spec = PlantedSpec::new(120, 40, 30, 3, 3, 61);
    spec.noise = 1e-2;
    let p = planted_low_rank(&spec).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, 120, 40, 30).unwrap();
    for (choice, kind) in [
        (CoreModelChoice::Gaussian, CoreModelKind::Gaussian),
        (CoreModelChoice::Mixture, CoreModelKind::Mixture),
        (CoreModelChoice::Flow, CoreModelKind::Flow),
    ] {
        let opts = FitOptions {
            rank_rows: 3,
            rank_cols: 3,
            threads: 1,
            flow: FlowOptions {
                core_model: choice,
                steps: 40,
                hidden: 16,
                layers: 1,
                moment_samples: 100,
                ..FlowOptions::default()
            },
            ..FitOptions::default()
        };
        let model = Model::fit(&batch, &opts).unwrap();
        assert_eq!(model.info().core_model, Some(kind));
        let expect = generative_outputs(&model, &p.data.data);
        let bytes = model.to_bytes();
        let back = Model::from_bytes(&bytes).unwrap();
        assert_eq!(format!("{:?}", back.info()), format!("{:?}", model.info()));
        assert_eq!(generative_outputs(&back, &p.data.data), expect, "{kind:?}");
        assert_eq!(back.to_bytes(), bytes, "{kind:?}: re-serialization differs");
    }
}

/// CRC-32 (IEEE), as the model file's trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A model whose noise law has a profile and Student-t tails.
fn heavy_tailed() -> (Model, Vec<f64>) {
    use coreflow::core_model::{CoreModelChoice, FlowOptions};
    let (count, m, n) = (200, 40, 30);
    let mut spec = PlantedSpec::new(count, m, n, 3, 3, 71);
    spec.noise = 0.0;
    let mut data = planted_low_rank(&spec).unwrap().data.data;
    let mut t = coreflow::rng::stream(72, 0);
    for (k, x) in data.iter_mut().enumerate() {
        let (a, b) = ((k / n) % m, k % n);
        let sd = 0.01 * (1.0 + a as f64 / 4.0) * (1.0 + (b % 5) as f64);
        *x += sd * coreflow::rng::student_t(&mut t, 4.0);
    }
    let batch = MatrixBatch::from_c_order(&data, count, m, n).unwrap();
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        threads: 1,
        flow: FlowOptions {
            core_model: CoreModelChoice::Gaussian,
            ..FlowOptions::default()
        },
        ..FitOptions::default()
    };
    (Model::fit(&batch, &opts).unwrap(), data)
}

/// Draws of 3 partial matrices, as bits.
fn imputed(model: &Model, data: &[f64]) -> Vec<u64> {
    use coreflow::flow::SolverOptions;
    let (k, m, n) = (3, 40, 30);
    let mask = mcar_mask(k, m, n, 0.3, 73).unwrap();
    let partial = MatrixBatch::from_c_order(&data[..k * m * n], k, m, n)
        .unwrap()
        .with_mask(&mask)
        .unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(k, &so).or(model.complete_scratch(k)));
    let mut out = vec![0.0; k * m * n];
    model
        .impute(
            &so,
            5,
            0,
            &partial,
            &mut MatrixBatchMut::from_c_order(&mut out, k, m, n).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let mut map = vec![0.0; k * m * n];
    model
        .complete(
            &partial,
            &mut MatrixBatchMut::from_c_order(&mut map, k, m, n).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    out.iter().chain(&map).map(|x| x.to_bits()).collect()
}

#[test]
fn the_noise_law_survives_save_and_load_and_is_validated() {
    let (model, data) = heavy_tailed();
    let noise = model.noise();
    assert!(noise.dof().is_finite(), "{noise:?}");
    assert!(
        model.info().noise_profile_spread > 5.0,
        "{:?}",
        model.info()
    );
    let bytes = model.to_bytes();
    let back = Model::from_bytes(&bytes).unwrap();
    assert_eq!(back.noise(), model.noise());
    assert_eq!(format!("{:?}", back.info()), format!("{:?}", model.info()));
    assert_eq!(imputed(&back, &data), imputed(&model, &data));
    assert_eq!(back.to_bytes(), bytes);

    // The NOIS section: tag, length, m + n profile values, dof, tail scale,
    // bound, range.
    let (m, n) = (40, 30);
    let at = bytes.windows(4).position(|w| w == b"NOIS").unwrap();
    let len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap());
    assert_eq!(len, 8 * (m + n + 5) as u64);
    assert!(noise.bound().is_finite());
    let [lo, hi] = noise.range();
    assert!(lo.is_finite() && hi.is_finite() && lo < hi);
    let value = |k: usize| at + 12 + 8 * k;
    // Damaged values under a valid checksum are refused with clear errors.
    let patch = |k: usize, x: f64| {
        let mut b = bytes.clone();
        b[value(k)..value(k) + 8].copy_from_slice(&x.to_le_bytes());
        let body = b.len() - 4;
        let crc = crc32(&b[..body]);
        b[body..].copy_from_slice(&crc.to_le_bytes());
        Model::from_bytes(&b)
    };
    let row0 = noise.row_profile()[0];
    for (k, x, what) in [
        (0, row0 * 1.5, "mean"),
        (0, -row0, "finite positive"),
        (m + 3, f64::NAN, "non-finite"),
        (m + n, 2.0, "degrees of freedom"),
        (m + n, f64::NAN, "degrees of freedom"),
        (m + n + 1, 0.0, "tail scale"),
        (m + n + 1, f64::INFINITY, "tail scale"),
        (m + n + 2, 0.0, "bound"),
        (m + n + 2, f64::NAN, "bound"),
        (m + n + 3, hi + 1.0, "range"),
        (m + n + 4, f64::NAN, "range"),
        (m + n + 4, f64::NEG_INFINITY, "range"),
    ] {
        let e = patch(k, x).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Format, "{e}");
        assert!(e.message().contains("NOIS"), "{e}");
        assert!(e.message().contains(what), "{what}: {e}");
    }
    // Gaussian tails with a tail scale other than 1.
    let mut b = bytes.clone();
    b[value(m + n)..value(m + n) + 8].copy_from_slice(&f64::INFINITY.to_le_bytes());
    b[value(m + n + 1)..value(m + n + 1) + 8].copy_from_slice(&0.5f64.to_le_bytes());
    let body = b.len() - 4;
    let crc = crc32(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
    let e = Model::from_bytes(&b).unwrap_err();
    assert!(e.message().contains("NOIS"), "{e}");
    // The same law as a version-5 file (no support): it loads with an
    // infinite bound and range.
    let mut b5 = bytes.clone();
    b5.drain(value(m + n + 2)..value(m + n + 5));
    b5[at + 4..at + 12].copy_from_slice(&(8 * (m + n + 2) as u64).to_le_bytes());
    b5[8..12].copy_from_slice(&5u32.to_le_bytes());
    let body = b5.len() - 4;
    let crc = crc32(&b5[..body]);
    b5[body..].copy_from_slice(&crc.to_le_bytes());
    let v5 = Model::from_bytes(&b5).unwrap();
    assert_eq!(v5.noise().bound(), f64::INFINITY);
    assert_eq!(v5.noise().range(), [f64::NEG_INFINITY, f64::INFINITY]);
    assert_eq!(v5.noise().dof(), noise.dof());
    assert_eq!(v5.info().noise_bound, f64::INFINITY);
    // A version-5 file without the section is refused.
    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(b"NOIZ");
    let body = b.len() - 4;
    let crc = crc32(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
    let e = Model::from_bytes(&b).unwrap_err();
    assert!(e.message().contains("NOIS"), "{e}");
    // The same bytes as a version-4 file (an unknown section is skipped):
    // a flat profile with Gaussian tails.
    let mut b4 = b.clone();
    b4[8..12].copy_from_slice(&4u32.to_le_bytes());
    let body = b4.len() - 4;
    let crc = crc32(&b4[..body]);
    b4[body..].copy_from_slice(&crc.to_le_bytes());
    let old = Model::from_bytes(&b4).unwrap();
    assert!(old.noise().is_gaussian());
    assert!(old.noise().row_profile().iter().all(|&x| x == 1.0));
    assert!(old.noise().col_profile().iter().all(|&x| x == 1.0));
    assert_eq!(old.info().noise_profile_spread, 1.0);
}

#[test]
fn a_version_2_file_loads_with_a_flat_gaussian_noise_law() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/demo_waves_v2.cfm");
    let model = Model::load(path).unwrap();
    let noise = model.noise();
    assert!(noise.is_gaussian() && noise.tail_scale() == 1.0);
    assert!(noise.row_profile().iter().all(|&x| x == 1.0));
    assert!(noise.col_profile().iter().all(|&x| x == 1.0));
    assert_eq!(model.info().noise_dof, f64::INFINITY);
    // Re-saved, it is a version-5 file with the same law.
    let back = Model::from_bytes(&model.to_bytes()).unwrap();
    assert_eq!(back.noise(), noise);
}
