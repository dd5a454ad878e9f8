//! Weights as data plus one selection function.
//!
//! A weight is a share of [`BUCKETS`] (basis points: 10 000 = 100 %). Backends own
//! consecutive bucket ranges in the order they are declared in `[backends]`, which
//! never changes with the weights, so raising one backend's share only moves buckets
//! towards it: a user who is on `new` at 10 % is still on `new` at 50 %.

use crate::hash::BUCKETS;

/// Per-backend shares, indexed by [`crate::BackendId`] (declaration order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// Basis points per backend; sums to [`BUCKETS`].
    bp: Vec<u16>,
    /// Exclusive upper bucket of each backend's range, precomputed for [`Weights::pick`].
    ends: Vec<u16>,
}

impl Weights {
    /// Builds weights from basis points per backend. The caller has validated that
    /// they sum to [`BUCKETS`].
    pub fn from_basis_points(bp: Vec<u16>) -> Self {
        let mut ends = Vec::with_capacity(bp.len());
        let mut acc: u16 = 0;
        for &w in &bp {
            acc = acc.saturating_add(w);
            ends.push(acc);
        }
        Self { bp, ends }
    }

    /// The backend that owns `bucket`. Buckets past the last range (impossible when
    /// the weights sum to 10 000) fall to the last backend with a non-zero weight.
    #[inline]
    pub fn pick(&self, bucket: u16) -> usize {
        for (i, &end) in self.ends.iter().enumerate() {
            if bucket < end {
                return i;
            }
        }
        self.bp.iter().rposition(|&w| w > 0).unwrap_or(0)
    }

    /// Basis points of backend `i` (0 for an unknown index).
    pub fn basis_points(&self, i: usize) -> u16 {
        self.bp.get(i).copied().unwrap_or(0)
    }

    /// Basis points, indexed by backend.
    pub fn as_slice(&self) -> &[u16] {
        &self.bp
    }

    /// Whether the weights sum to exactly 100 %.
    pub fn is_complete(&self) -> bool {
        self.bp.iter().map(|&w| u32::from(w)).sum::<u32>() == u32::from(BUCKETS)
    }
}

/// Parses a percentage with at most two decimals into basis points.
pub fn parse_percent(v: f64) -> Result<u16, String> {
    if !v.is_finite() {
        return Err(format!("{v} is not a number"));
    }
    if v < 0.0 {
        return Err(format!("weight {v} is negative"));
    }
    if v > 100.0 {
        return Err(format!("weight {v} is above 100"));
    }
    let scaled = v * 100.0;
    let bp = scaled.round();
    if (scaled - bp).abs() > 1e-6 {
        return Err(format!(
            "weight {v} has more than two decimals (the granularity is 0.01)"
        ));
    }
    // 0 ≤ bp ≤ 10 000 was checked above, so the cast is exact.
    Ok(bp as u16)
}

/// Formats basis points as a percentage: 1250 → 12.5.
pub fn format_percent(bp: u16) -> f64 {
    f64::from(bp) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::bucket_of;

    fn w(bp: &[u16]) -> Weights {
        Weights::from_basis_points(bp.to_vec())
    }

    #[test]
    fn ranges_follow_declaration_order() {
        let weights = w(&[9000, 1000]);
        assert_eq!(weights.pick(0), 0);
        assert_eq!(weights.pick(8999), 0);
        assert_eq!(weights.pick(9000), 1);
        assert_eq!(weights.pick(9999), 1);
        let all_new = w(&[0, 10_000]);
        assert_eq!(all_new.pick(0), 1);
        let all_old = w(&[10_000, 0]);
        assert_eq!(all_old.pick(9999), 0);
    }

    #[test]
    fn percent_parsing_has_two_decimals() {
        assert_eq!(parse_percent(12.5), Ok(1250));
        assert_eq!(parse_percent(0.01), Ok(1));
        assert_eq!(parse_percent(33.33), Ok(3333));
        assert_eq!(parse_percent(100.0), Ok(10_000));
        assert!(parse_percent(0.001).unwrap_err().contains("two decimals"));
        assert!(parse_percent(-1.0).unwrap_err().contains("negative"));
        assert!(parse_percent(100.5).unwrap_err().contains("above 100"));
        assert!(parse_percent(f64::NAN).is_err());
    }

    fn keys(n: usize) -> Vec<String> {
        // Distinct 128-bit hex keys, the shape of the cookie the proxy mints, from a
        // fixed-seed generator so the test is repeatable.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n)
            .map(|_| format!("{:016x}{:016x}", next(), next()))
            .collect()
    }

    #[test]
    fn measured_share_is_within_one_and_a_half_points() {
        let keys = keys(20_000);
        for new_pct in [10u16, 50, 90] {
            let weights = w(&[10_000 - new_pct * 100, new_pct * 100]);
            let on_new = keys
                .iter()
                .filter(|k| weights.pick(bucket_of(k.as_bytes())) == 1)
                .count();
            let share = on_new as f64 * 100.0 / keys.len() as f64;
            assert!(
                (share - f64::from(new_pct)).abs() <= 1.5,
                "new at {new_pct}%: measured {share:.2}%"
            );
        }
    }

    #[test]
    fn raising_new_never_moves_a_user_back_to_old() {
        let keys = keys(20_000);
        let steps = [0u16, 1, 1000, 2500, 5000, 5001, 9000, 10_000];
        for pair in steps.windows(2) {
            let before = w(&[10_000 - pair[0], pair[0]]);
            let after = w(&[10_000 - pair[1], pair[1]]);
            for k in &keys {
                let b = bucket_of(k.as_bytes());
                if before.pick(b) == 1 {
                    assert_eq!(after.pick(b), 1, "key {k} moved new → old at {pair:?}");
                }
            }
        }
    }

    #[test]
    fn three_backends_own_consecutive_ranges() {
        let weights = w(&[2000, 3000, 5000]);
        assert_eq!(weights.pick(1999), 0);
        assert_eq!(weights.pick(2000), 1);
        assert_eq!(weights.pick(4999), 1);
        assert_eq!(weights.pick(5000), 2);
        assert!(weights.is_complete());
        assert!(!w(&[2000, 3000]).is_complete());
    }
}
