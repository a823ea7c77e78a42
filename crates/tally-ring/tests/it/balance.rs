//! Balance at the default 160 points per node, for the node counts tally is run with.

use tally_ring::Ring;

const VNODES: u32 = 160;
const KEYS: usize = 200_000;

fn ring(n: usize) -> Ring<String> {
    Ring::builder()
        .vnodes(VNODES)
        .nodes((1..=n).map(|i| (format!("redis{i}:6379"), 1)))
        .build()
        .unwrap()
}

fn max_over_mean(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().copied().fold(f64::MIN, f64::max) / mean
}

fn coefficient_of_variation(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    variance.sqrt() / mean
}

/// Each node's share of the hash space is a sum of 160 gaps, so it deviates from 1/N with a
/// coefficient of variation of about 1/sqrt(160) = 0.079. The largest of N such shares is
/// then about 1 + z(N) * 0.079 times the mean, z(N) the expected maximum of N standard
/// normals: 0.85 for N = 3, 1.54 for N = 10, 2.51 for N = 100. A max/mean of 1.20 is thus
/// 2.5 sigma for N = 3 and 10, but only the typical value for N = 100, where half of all
/// node name sets exceed it (these names measure 1.24). The bounds allow about 1.3 sigma of
/// the maximum's own spread above the expectation: a ring whose points were not spread by
/// the hash (a wrong formula, a lost weight, a skewed table) fails them by far.
#[test]
fn hash_space_shares_are_balanced_at_160_points() {
    for (n, max_bound, cv_bound) in [(3, 1.20, 0.20), (10, 1.20, 0.12), (100, 1.30, 0.085)] {
        let shares = ring(n).shares();
        let (max, cv) = (max_over_mean(&shares), coefficient_of_variation(&shares));
        assert!(max <= max_bound, "n={n}: max/mean {max:.4} > {max_bound}");
        assert!(cv <= cv_bound, "n={n}: cv {cv:.4} > {cv_bound}");
    }
}

#[test]
fn weights_scale_shares() {
    let weights = [1u32, 2, 3, 1, 2, 3, 1, 2, 3, 4];
    let ring = Ring::builder()
        .vnodes(VNODES)
        .nodes(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (format!("redis{i}:6379"), w)),
        )
        .build()
        .unwrap();
    let total: u32 = weights.iter().sum();
    for (share, &w) in ring.shares().iter().zip(&weights) {
        let ratio = share / (f64::from(w) / f64::from(total));
        // Weight w has 160 * w points, so its spread is 0.079 / sqrt(w) or less: 1.25 is
        // beyond 3 sigma for every weight here.
        assert!(
            (0.75..=1.25).contains(&ratio),
            "weight {w}: share/fair {ratio:.3}"
        );
    }
}

/// Sampled keys land on nodes in proportion to their shares. A node's count among K keys is
/// binomial(K, share): it may stray from K * share by sqrt(K * share * (1 - share)), 45
/// keys for N = 100 (2.2 % of the mean), so each node may be off by 5 of those (a chance of
/// about 6e-7 per node for uniform hashes). A broken key hash or lookup that favours some
/// points is off by far more.
#[test]
fn sampled_keys_follow_the_hash_space_shares() {
    for n in [3, 10, 100] {
        let ring = ring(n);
        let mut counts = vec![0u64; n];
        for i in 0..KEYS {
            counts[ring.lookup_index(format!("page{i}").as_bytes())] += 1;
        }
        for (node, (&count, share)) in counts.iter().zip(ring.shares()).enumerate() {
            let expected = KEYS as f64 * share;
            let sigma = (expected * (1.0 - share)).sqrt();
            assert!(
                (count as f64 - expected).abs() <= 5.0 * sigma,
                "n={n} node {node}: {count} keys, {expected:.0} expected (sigma {sigma:.1})"
            );
        }
        let loads: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let sampled = max_over_mean(&loads);
        let hashed = max_over_mean(&ring.shares());
        assert!(
            (sampled - hashed).abs() <= 0.12,
            "n={n}: sampled max/mean {sampled:.4} far from hash-space {hashed:.4}"
        );
    }
}
