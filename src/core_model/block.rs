//! The leading block: how many principal components get a non-Gaussian
//! model (energy rule and noise floor).

/// Largest fraction of the total variance the noise-floor rule leaves
/// below a gap: a gap with more variance beneath it separates signal from
/// signal (one dominant direction), not signal from noise.
pub const NOISE_TAIL_MAX: f64 = 0.05;

/// The flow block chosen among the principal components.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockChoice {
    /// Number `k` of leading components in the flow block.
    pub size: usize,
    /// First component below the noise floor, when the noise-floor rule
    /// found one (then `size <= noise_from`; they differ only under
    /// `max_dim`).
    pub noise_from: Option<usize>,
}

/// The number `k` of leading principal components in the flow block, and
/// where the noise floor starts.
///
/// `variances` are the component variances, descending, and `total` the
/// total variance (at least their sum; the directions they do not span may
/// hold the rest). Energy rule: the smallest `k` with `sum_{j <= k}
/// lambda_j >= energy x total`. Noise floor (when `noise_gap > 0`): the
/// first `j < k` with `lambda_j >= noise_gap x lambda_(j+1)` and
/// `total - sum_{i <= j} lambda_i <= NOISE_TAIL_MAX x total` ends the block
/// at `j`. Projected noise, or a completion's error in the cores, spreads
/// over many components whose variances decay smoothly and together often
/// exceed the `1 - energy` the energy rule leaves out; standardised, each
/// would weigh in the flow as much as a signal direction. Then the cap
/// `max_dim` (0 = none). The size is at least 1, and at most
/// `variances.len()` unless that is 0.
pub fn flow_block(
    variances: &[f64],
    total: f64,
    energy: f64,
    noise_gap: f64,
    max_dim: usize,
) -> BlockChoice {
    let q = variances.len();
    let mut k = 0;
    let mut cum = 0.0;
    while k < q {
        cum += variances[k];
        k += 1;
        if cum >= energy * total * (1.0 - 1e-12) {
            break;
        }
    }
    let mut noise_from = None;
    if noise_gap > 0.0 {
        let mut kept = 0.0;
        for j in 0..k.saturating_sub(1) {
            kept += variances[j];
            if variances[j] >= noise_gap * variances[j + 1]
                && total - kept <= NOISE_TAIL_MAX * total
            {
                k = j + 1;
                noise_from = Some(k);
                break;
            }
        }
    }
    if max_dim > 0 {
        k = k.min(max_dim);
    }
    BlockChoice {
        size: k.max(1),
        noise_from,
    }
}
