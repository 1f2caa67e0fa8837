//! The model file format (DESIGN.md section 10).
//!
//! Little-endian throughout:
//!
//! ```text
//! header   "COREFLOW" (8 bytes), format version u32, reserved u32 (0)
//! section  tag (4 ASCII bytes), payload length u64, payload     (repeated)
//! trailer  CRC-32 (IEEE) of every preceding byte, u32
//! ```
//!
//! Sections of versions 2 to 4: `META` (sizes, flags and summary numbers, as two
//! counted arrays of u64 and f64 so later versions can append fields),
//! `BASU` (U, column-major), `BASV` (V), `MEAN` (Xbar, only when centered),
//! `PRIO` (core prior: mean, number q of principal directions, directions
//! `d x q`, variances, ridge, noise variance) and, when the model has one,
//! `CORE` (the core model: summary, then mean, q, principal directions,
//! variances and ridge, then the flow block when there is one). Unknown
//! sections are skipped. Nothing in the file is `d x d`: both Gaussians are
//! stored as their principal directions plus a ridge, `q <= min(d, N)`.
//!
//! Version 3 appends to `CORE` AUTO's MMD^2 check of both kinds (after the
//! held-out log-likelihoods) and the flow block's support radius (after the
//! moment matching); version-2 files are read with NaN criteria and the
//! radius `V2_SUPPORT_RADIUS_PER_SQRT_K x sqrt(k)`.
//!
//! Version 4 appends to `CORE` the mixture's block size and component
//! count and the flow's training steps (after the hold-out count), its held-out log-likelihood and MMD^2
//! check (after the flow's), and a third kind of leading block: the flag
//! after the ridge is 0 (none), 1 (flow) or 2 (Gaussian mixture: scales,
//! weights, means `K x k` and Cholesky factors, each a counted f64 array).
//! Version-3 files read with NaN / 0 in those fields.
//!
//! Version 5 adds the section `NOIS`, the noise law outside the geometry
//! ([`crate::noise`]): the row profile (m f64), the column profile (n f64),
//! the degrees of freedom of the tails (f64, `+inf` for Gaussian noise) and
//! the tail scale (f64). It is required from version 5 on and checked on
//! reading (finite profiles of values at least 1e-6 and mean 1, degrees of freedom above 2
//! or infinite, a finite positive tail scale, 1 for Gaussian tails).
//! Files of versions 2 to 4 read with a flat profile and Gaussian tails,
//! which reproduce their outputs bitwise.
//!
//! Version 6 appends to `NOIS` the support of a draw ([`crate::noise`],
//! "Support of a draw"): the bound of the standardised noise (f64, positive,
//! `+inf` for none) and the range of the training values (two f64, low <=
//! high). Version-5 files read with no support (infinite bound and range),
//! which reproduces their outputs bitwise.
//!
//! Version 1 (dense Cholesky factors and a flow block on core coordinates)
//! is not read: its files are refused with `ErrorKind::Version`.
//!
//! Reading checks, in order: the magic (`Format`), the version (`Version`),
//! the checksum (`Format`), then every section length against the bytes
//! that remain and every array length against the sizes in `META`, so no
//! allocation is ever sized by an unchecked length field.

use super::{set_core_info, Model, ModelInfo};
use crate::completion::CorePrior;
use crate::core_model::{
    CoreModel, CoreModelChoice, CoreModelInfo, CoreModelKind, CoreModelParts, FlowParts,
    MixtureParts, NetParams,
};
use crate::error::{Error, ErrorKind, Result};
use crate::noise::NoiseModel;
use faer::Mat;
use std::path::Path;

const MAGIC: &[u8; 8] = b"COREFLOW";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 6;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 2;
/// The support radius given to the flow block of a version-2 file, which
/// does not store one, per `sqrt(k)`: ten times the root-mean-square norm of
/// the standardised block (see `FlowParts::support_radius`).
pub const V2_SUPPORT_RADIUS_PER_SQRT_K: f64 = 10.0;
const HEADER_LEN: usize = 16;

fn format_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Format, msg)
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u32(&mut self, x: u32) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.buf.extend_from_slice(&x.to_le_bytes());
    }
    fn f64s(&mut self, xs: impl IntoIterator<Item = f64>) {
        for x in xs {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    /// Writes a section whose payload `body` produces.
    fn section(&mut self, tag: &[u8; 4], body: impl FnOnce(&mut Writer)) {
        self.buf.extend_from_slice(tag);
        let len_at = self.buf.len();
        self.u64(0);
        let start = self.buf.len();
        body(self);
        let len = (self.buf.len() - start) as u64;
        self.buf[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
    }
    fn mat(&mut self, m: &Mat<f64>) {
        self.f64s((0..m.ncols()).flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)])));
    }
    /// A length-prefixed array of f64.
    fn f64_array(&mut self, xs: &[f64]) {
        self.u64(xs.len() as u64);
        self.f64s(xs.iter().copied());
    }
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(format_err(format!(
                "model data: {} is truncated ({} bytes needed at offset {}, {} left)",
                self.what,
                n,
                self.pos,
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// `n` finite f64 values; `n` is checked against the remaining bytes
    /// before anything is allocated.
    fn f64s(&mut self, n: usize) -> Result<Vec<f64>> {
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| format_err("model data: array length overflows"))?;
        let raw = self.take(bytes)?;
        let v: Vec<f64> = raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(format_err(format!(
                "model data: {} holds a non-finite value",
                self.what
            )));
        }
        Ok(v)
    }
    fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| {
            format_err(format!(
                "model data: {} holds an oversized value",
                self.what
            ))
        })
    }
    /// A length-prefixed array of finite f64.
    fn f64_array(&mut self) -> Result<Vec<f64>> {
        let n = self.usize()?;
        self.f64s(n)
    }
    /// `n` finite f32 values.
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| format_err("model data: array length overflows"))?;
        let raw = self.take(bytes)?;
        let v: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(format_err(format!(
                "model data: {} holds a non-finite value",
                self.what
            )));
        }
        Ok(v)
    }
    fn mat(&mut self, rows: usize, cols: usize) -> Result<Mat<f64>> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| format_err("model data: matrix size overflows"))?;
        let v = self.f64s(n)?;
        Ok(Mat::from_fn(rows, cols, |i, j| v[i + j * rows]))
    }
    fn done(&self) -> Result<()> {
        if self.pos != self.data.len() {
            return Err(format_err(format!(
                "model data: section {} has {} unexpected trailing bytes",
                self.what,
                self.data.len() - self.pos
            )));
        }
        Ok(())
    }
}

const META_U64: usize = 9;
const META_F64: usize = 5;

/// Serializes a model (the whole file image).
pub fn to_bytes(model: &Model) -> Vec<u8> {
    let info = &model.info;
    let mut w = Writer { buf: Vec::new() };
    w.buf.extend_from_slice(MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(0);
    w.section(b"META", |w| {
        let flags = info.centered as u64
            | (info.masked as u64) << 1
            | (info.has_flow as u64) << 2
            | (info.subspace_converged as u64) << 3
            | (info.completion_converged as u64) << 4;
        w.u32(META_U64 as u32);
        w.u32(META_F64 as u32);
        for x in [
            info.rows,
            info.cols,
            info.rank_rows,
            info.rank_cols,
            info.train_count,
            flags as usize,
            info.subspace_iterations,
            info.completion_iterations,
            info.flow_dim,
        ] {
            w.u64(x as u64);
        }
        w.f64s([
            info.explained_energy,
            info.final_loss,
            info.subspace_objective,
            info.completion_objective,
            info.noise_variance,
        ]);
    });
    w.section(b"BASU", |w| w.mat(&model.u));
    w.section(b"BASV", |w| w.mat(&model.v));
    if let Some(mean) = &model.mean {
        w.section(b"MEAN", |w| w.mat(mean));
    }
    w.section(b"PRIO", |w| {
        let p = &model.prior;
        w.f64s(p.mean.iter().copied());
        w.u64(p.basis.ncols() as u64);
        w.mat(&p.basis);
        w.f64s(p.variances.iter().copied());
        w.f64s([p.ridge, p.noise_var]);
    });
    w.section(b"NOIS", |w| {
        let nz = &model.noise;
        w.f64s(nz.row_profile().iter().copied());
        w.f64s(nz.col_profile().iter().copied());
        w.f64s([nz.dof(), nz.tail_scale()]);
        w.f64s([nz.bound(), nz.range()[0], nz.range()[1]]);
    });
    if let Some(core) = &model.core {
        w.section(b"CORE", |w| write_core(w, &core.to_parts()));
    }
    let crc = crc32fast::hash(&w.buf);
    w.u32(crc);
    w.buf
}

fn write_core(w: &mut Writer, p: &CoreModelParts) {
    let i = &p.info;
    let kind = match i.kind {
        CoreModelKind::Flow => 0,
        CoreModelKind::Gaussian => 1,
        CoreModelKind::Mixture => 2,
    };
    let requested = match i.requested {
        CoreModelChoice::Auto => 0,
        CoreModelChoice::Flow => 1,
        CoreModelChoice::Gaussian => 2,
        CoreModelChoice::Mixture => 3,
    };
    for x in [
        p.dim,
        kind,
        requested,
        i.flow_block,
        i.train_count,
        i.holdout_count,
        i.mixture_block,
        i.mixture_components,
        i.flow_train_steps,
    ] {
        w.u64(x as u64);
    }
    w.f64s([
        i.flow_energy,
        i.final_loss,
        i.heldout_loglik_flow,
        i.heldout_loglik_gaussian,
        i.heldout_mmd_gaussian,
        i.heldout_mmd_flow,
        i.heldout_loglik_mixture,
        i.heldout_mmd_mixture,
    ]);
    let q = p.variances.len();
    w.u64(q as u64);
    w.f64s(p.mean.iter().copied());
    w.f64s(p.basis.iter().copied());
    w.f64s(p.variances.iter().copied());
    w.f64s([p.ridge]);
    let block = match (&p.flow, &p.mixture) {
        (Some(_), _) => 1,
        (None, Some(_)) => 2,
        (None, None) => 0,
    };
    w.u64(block);
    if let Some(m) = &p.mixture {
        w.f64_array(&m.scale);
        w.f64_array(&m.weights);
        w.f64_array(&m.means);
        w.f64_array(&m.chols);
    }
    if let Some(f) = &p.flow {
        w.f64_array(&f.scale);
        for x in [f.hidden, f.layers, f.time_freqs] {
            w.u64(x as u64);
        }
        match &f.params {
            NetParams::F32(v) => {
                w.u64(0);
                w.u64(v.len() as u64);
                for x in v {
                    w.buf.extend_from_slice(&x.to_le_bytes());
                }
            }
            NetParams::F64(v) => {
                w.u64(1);
                w.f64_array(v);
            }
        }
        w.f64_array(&f.mm_shift);
        w.f64_array(&f.mm_matrix);
        w.f64s([f.support_radius]);
    }
}

/// The number q of principal directions of a `d`-dimensional Gaussian
/// (checked: `q <= d`).
fn read_components(r: &mut Reader<'_>, d: usize) -> Result<usize> {
    let q = r.usize()?;
    if q > d {
        return Err(format_err(format!(
            "model data: {} has {q} principal directions in dimension {d}",
            r.what
        )));
    }
    Ok(q)
}

fn read_core(r: &mut Reader<'_>, core_dim: usize, version: u32) -> Result<CoreModel> {
    let dim = r.usize()?;
    if dim != core_dim {
        return Err(format_err("model data: CORE dimension differs from r * s"));
    }
    let kind = match r.u64()? {
        0 => CoreModelKind::Flow,
        1 => CoreModelKind::Gaussian,
        2 if version >= 4 => CoreModelKind::Mixture,
        _ => return Err(format_err("model data: CORE has an unknown kind")),
    };
    let requested = match r.u64()? {
        0 => CoreModelChoice::Auto,
        1 => CoreModelChoice::Flow,
        2 => CoreModelChoice::Gaussian,
        3 if version >= 4 => CoreModelChoice::Mixture,
        _ => return Err(format_err("model data: CORE has an unknown choice")),
    };
    let (flow_block, train_count, holdout_count) = (r.usize()?, r.usize()?, r.usize()?);
    let (mixture_block, mixture_components, flow_train_steps) = if version >= 4 {
        (r.usize()?, r.usize()?, r.usize()?)
    } else {
        (0, 0, 0)
    };
    let info = CoreModelInfo {
        kind,
        requested,
        dim,
        flow_block,
        flow_energy: r.f64()?,
        train_count,
        holdout_count,
        final_loss: r.f64()?,
        heldout_loglik_flow: r.f64()?,
        heldout_loglik_gaussian: r.f64()?,
        heldout_mmd_gaussian: if version >= 3 { r.f64()? } else { f64::NAN },
        heldout_mmd_flow: if version >= 3 { r.f64()? } else { f64::NAN },
        heldout_loglik_mixture: if version >= 4 { r.f64()? } else { f64::NAN },
        heldout_mmd_mixture: if version >= 4 { r.f64()? } else { f64::NAN },
        mixture_block,
        mixture_components,
        flow_train_steps,
    };
    let q = read_components(r, dim)?;
    let mean = r.f64s(dim)?;
    let basis = r.f64s(
        dim.checked_mul(q)
            .ok_or_else(|| format_err("model data: CORE basis size overflows"))?,
    )?;
    let variances = r.f64s(q)?;
    let ridge = r.f64()?;
    let block = r.u64()?;
    let mixture = match block {
        2 if version >= 4 => Some(MixtureParts {
            scale: r.f64_array()?,
            weights: r.f64_array()?,
            means: r.f64_array()?,
            chols: r.f64_array()?,
        }),
        _ => None,
    };
    let flow = match block {
        0 => None,
        2 if version >= 4 => None,
        1 => {
            let scale = r.f64_array()?;
            let (hidden, layers, time_freqs) = (r.usize()?, r.usize()?, r.usize()?);
            let params = match r.u64()? {
                0 => {
                    let n = r.usize()?;
                    NetParams::F32(r.f32s(n)?)
                }
                1 => NetParams::F64(r.f64_array()?),
                _ => return Err(format_err("model data: CORE has an unknown precision")),
            };
            let mm_shift = r.f64_array()?;
            let mm_matrix = r.f64_array()?;
            let support_radius = if version >= 3 {
                r.f64()?
            } else {
                V2_SUPPORT_RADIUS_PER_SQRT_K * (scale.len() as f64).sqrt()
            };
            Some(FlowParts {
                scale,
                hidden,
                layers,
                time_freqs,
                params,
                mm_shift,
                mm_matrix,
                support_radius,
            })
        }
        _ => return Err(format_err("model data: CORE has an unknown leading block")),
    };
    r.done()?;
    CoreModel::from_parts(CoreModelParts {
        dim,
        info,
        mean,
        basis,
        variances,
        ridge,
        flow,
        mixture,
    })
}

/// Parses and validates a model file image.
pub fn from_bytes(data: &[u8]) -> Result<Model> {
    if data.len() < HEADER_LEN + 4 || &data[..8] != MAGIC {
        return Err(format_err(
            "model data: not a CoreFlow model (bad magic or too short)",
        ));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::new(
            ErrorKind::Version,
            format!("model data: format version {version} is not supported (this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})"),
        ));
    }
    let (body, trailer) = data.split_at(data.len() - 4);
    let stored = u32::from_le_bytes(trailer.try_into().unwrap());
    if crc32fast::hash(body) != stored {
        return Err(format_err(
            "model data: checksum mismatch (the data are corrupt or truncated)",
        ));
    }
    if body[12..16] != [0; 4] {
        return Err(format_err("model data: reserved header field is not zero"));
    }
    let mut sections: Vec<([u8; 4], &[u8])> = Vec::new();
    let mut r = Reader {
        data: body,
        pos: HEADER_LEN,
        what: "section table",
    };
    while r.pos < body.len() {
        let tag: [u8; 4] = r.take(4)?.try_into().unwrap();
        let len = r.u64()?;
        let len =
            usize::try_from(len).map_err(|_| format_err("model data: section length overflows"))?;
        sections.push((tag, r.take(len)?));
    }
    let find = |tag: &[u8; 4], what: &'static str| -> Result<Reader<'_>> {
        let mut found = sections.iter().filter(|(t, _)| t == tag);
        let (_, payload) = found.next().ok_or_else(|| {
            format_err(format!(
                "model data: the required section {what} is missing"
            ))
        })?;
        if found.next().is_some() {
            return Err(format_err(format!(
                "model data: section {what} appears twice"
            )));
        }
        Ok(Reader {
            data: payload,
            pos: 0,
            what,
        })
    };
    let has = |tag: &[u8; 4]| sections.iter().any(|(t, _)| t == tag);

    let mut meta = find(b"META", "META")?;
    let (nu, nf) = (meta.u32()? as usize, meta.u32()? as usize);
    if nu < META_U64 || nf < META_F64 {
        return Err(format_err("model data: META holds too few fields"));
    }
    let mut us = [0usize; META_U64];
    for x in us.iter_mut() {
        *x = usize::try_from(meta.u64()?)
            .map_err(|_| format_err("model data: META size overflows"))?;
    }
    meta.take((nu - META_U64) * 8)?;
    let mut fs = [0f64; META_F64];
    for x in fs.iter_mut() {
        *x = meta.f64()?;
    }
    meta.take((nf - META_F64) * 8)?;
    meta.done()?;
    let [rows, cols, r_rows, r_cols, train_count, flags, sub_iters, comp_iters, flow_dim] = us;
    let centered = flags & 1 != 0;
    if rows == 0 || cols == 0 || r_rows == 0 || r_cols == 0 || r_rows > rows || r_cols > cols {
        return Err(format_err(format!(
            "model data: inconsistent sizes {rows} x {cols} with ranks {r_rows} x {r_cols}"
        )));
    }
    let d = r_rows * r_cols;
    let mut ru = find(b"BASU", "BASU")?;
    let u = ru.mat(rows, r_rows)?;
    ru.done()?;
    let mut rv = find(b"BASV", "BASV")?;
    let v = rv.mat(cols, r_cols)?;
    rv.done()?;
    let mean = if centered {
        let mut rm = find(b"MEAN", "MEAN")?;
        let m = rm.mat(rows, cols)?;
        rm.done()?;
        Some(m)
    } else {
        if has(b"MEAN") {
            return Err(format_err(
                "model data: MEAN present in an uncentered model",
            ));
        }
        None
    };
    let mut rp = find(b"PRIO", "PRIO")?;
    let prior_mean = rp.f64s(d)?;
    let q = read_components(&mut rp, d)?;
    let prior_basis = rp.mat(d, q)?;
    let prior_variances = rp.f64s(q)?;
    let prior_ridge = rp.f64()?;
    let noise_var = rp.f64()?;
    rp.done()?;
    if noise_var.is_nan() || noise_var <= 0.0 {
        return Err(format_err(
            "model data: PRIO noise variance is not positive",
        ));
    }
    if prior_ridge.is_nan() || prior_ridge <= 0.0 || prior_variances.iter().any(|v| *v < 0.0) {
        return Err(format_err(
            "model data: PRIO variances are negative or the ridge is not positive",
        ));
    }
    let noise = if version >= 5 {
        let mut rn = find(b"NOIS", "NOIS")?;
        let row = rn.f64s(rows)?;
        let col = rn.f64s(cols)?;
        // The degrees of freedom may be +inf (Gaussian): read unchecked,
        // validated below.
        let dof = rn.f64()?;
        let tail_scale = rn.f64()?;
        let (bound, range) = if version >= 6 {
            (rn.f64()?, [rn.f64()?, rn.f64()?])
        } else {
            (f64::INFINITY, [f64::NEG_INFINITY, f64::INFINITY])
        };
        rn.done()?;
        NoiseModel::from_parts(row, col, dof, tail_scale, bound, range)
            .map_err(|e| format_err(format!("model data: NOIS: {}", e.message())))?
    } else {
        NoiseModel::flat(rows, cols)
    };
    let core = if has(b"CORE") {
        let mut rc = find(b"CORE", "CORE")?;
        Some(read_core(&mut rc, d, version)?)
    } else {
        None
    };
    let mut info = ModelInfo {
        rows,
        cols,
        rank_rows: r_rows,
        rank_cols: r_cols,
        core_dim: d,
        flow_dim,
        centered,
        has_flow: false,
        train_count,
        explained_energy: fs[0],
        final_loss: fs[1],
        subspace_iterations: sub_iters,
        subspace_converged: flags & 1 << 3 != 0,
        subspace_objective: fs[2],
        masked: flags & 1 << 1 != 0,
        completion_iterations: comp_iters,
        completion_converged: flags & 1 << 4 != 0,
        completion_objective: fs[3],
        noise_variance: fs[4],
        ..ModelInfo::empty()
    };
    if let Some(core) = &core {
        set_core_info(&mut info, core);
    }
    if info.flow_dim != flow_dim {
        return Err(format_err(
            "model data: META flow dimension differs from CORE",
        ));
    }
    let prior = CorePrior {
        mean: prior_mean,
        basis: prior_basis,
        variances: prior_variances,
        ridge: prior_ridge,
        noise_var,
    };
    Ok(Model::from_parts(u, v, mean, prior, noise, core, info))
}

/// Writes the model file to `path`.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    std::fs::write(path, to_bytes(model)).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("path: cannot write {}: {e}", path.display()),
        )
    })
}

/// Reads a model file from `path`.
pub fn load(path: &Path) -> Result<Model> {
    let data = std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("path: cannot read {}: {e}", path.display()),
        )
    })?;
    from_bytes(&data)
}
