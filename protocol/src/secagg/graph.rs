//! Who masks with whom: the pairing graph of a round.
//!
//! With few nodes every pair shares a mask (Bonawitz et al., CCS 2017). With many, each node pairs
//! only with `k` neighbours, as in SecAgg+ (Bell et al., CCS 2020): the nodes are placed on a ring
//! in an order drawn from a seed the coordinator publishes, and each is joined to its `⌊k/2⌋`
//! nearest ring neighbours on either side (a Harary graph over a random permutation); for odd `k`
//! each is also joined to the node diametrically opposite. Every party recomputes the same graph
//! from the seed.
//!
//! The permutation is a Fisher–Yates shuffle driven by ChaCha20 (`rand_chacha`'s `ChaCha20Rng`
//! seeded with the seed) with unbiased rejection sampling written out here, rather than
//! `rand::seq::SliceRandom::shuffle`, whose output rand does not promise to keep across versions.
//! A known-answer test pins the result.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::crypto::CryptoError;

/// Each node's neighbours (indices into `0..n`, ascending): the complete graph when
/// `k ≥ n − 1`, otherwise a `k`-regular Harary graph over a permutation drawn from `seed`.
///
/// The result is symmetric and has no self-loops. Errors: `k = 0` with more than one node (a node
/// without neighbours would have no pairwise mask), and odd `k` with odd `n` (no `k`-regular graph
/// exists).
pub fn neighbours(n: usize, k: usize, seed: [u8; 32]) -> Result<Vec<Vec<usize>>, CryptoError> {
    if k >= n.saturating_sub(1) {
        return Ok((0..n)
            .map(|i| (0..n).filter(|&j| j != i).collect())
            .collect());
    }
    // Here 0 ≤ k < n − 1, so n ≥ 2.
    if k == 0 {
        return Err(CryptoError::ZeroDegree { n });
    }
    if k % 2 == 1 && n % 2 == 1 {
        return Err(CryptoError::OddDegree { n, k });
    }

    let ring = permutation(n, seed);
    let mut out = vec![Vec::with_capacity(k); n];
    // k < n − 1 keeps these edges distinct: ring offsets 1..=⌊k/2⌋ on one side never meet those
    // on the other (they would need d + d' = n > k), and the diameter n/2 exceeds ⌊k/2⌋.
    for (pos, &node) in ring.iter().enumerate() {
        for offset in 1..=k / 2 {
            let other = ring[(pos + offset) % n];
            out[node].push(other);
            out[other].push(node);
        }
        if k % 2 == 1 && pos < n / 2 {
            let other = ring[pos + n / 2];
            out[node].push(other);
            out[other].push(node);
        }
    }
    for list in &mut out {
        list.sort_unstable();
    }
    Ok(out)
}

// ---- helpers ----------------------------------------------------------------------------------

/// A uniformly random permutation of `0..n` determined by `seed`.
fn permutation(n: usize, seed: [u8; 32]) -> Vec<usize> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = uniform_below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A uniform integer in `0..bound` (`bound ≥ 1`): rejects the `2^64 mod bound` lowest draws so
/// that every residue is equally likely.
fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let reject_below = bound.wrapping_neg() % bound;
    loop {
        let x = rng.next_u64();
        if x >= reject_below {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn check_graph(graph: &[Vec<usize>], n: usize, degree: usize) {
        assert_eq!(graph.len(), n);
        for (i, list) in graph.iter().enumerate() {
            assert_eq!(list.len(), degree, "node {i}");
            let set: BTreeSet<usize> = list.iter().copied().collect();
            assert_eq!(set.len(), degree, "node {i} has repeated neighbours");
            assert!(!set.contains(&i), "node {i} neighbours itself");
            for &j in list {
                assert!(j < n);
                assert!(graph[j].contains(&i), "{i}→{j} not symmetric");
            }
            assert!(list.windows(2).all(|w| w[0] < w[1]), "node {i} not sorted");
        }
    }

    #[test]
    fn complete_graph_when_k_covers_everyone() {
        for (n, k) in [(0, 0), (1, 0), (2, 1), (5, 4), (5, 10), (7, 6)] {
            let g = neighbours(n, k, [0; 32]).unwrap();
            check_graph(&g, n, n.saturating_sub(1));
        }
    }

    #[test]
    fn regular_symmetric_no_self_loops() {
        for (n, k) in [
            (10, 2),
            (10, 3),
            (10, 7),
            (11, 4),
            (11, 8),
            (100, 1),
            (100, 20),
            (101, 30),
            (1000, 40),
            (1000, 41),
        ] {
            let g = neighbours(n, k, [n as u8; 32]).unwrap();
            check_graph(&g, n, k);
        }
    }

    #[test]
    fn deterministic_per_seed_and_differs_across_seeds() {
        let a = neighbours(50, 6, [1; 32]).unwrap();
        assert_eq!(a, neighbours(50, 6, [1; 32]).unwrap());
        assert_ne!(a, neighbours(50, 6, [2; 32]).unwrap());
    }

    #[test]
    fn known_answer() {
        // Pins the permutation algorithm and the ChaCha20Rng stream: every party, whatever its
        // build, must derive this same graph from this seed.
        let g = neighbours(8, 2, [7; 32]).unwrap();
        assert_eq!(g, KNOWN_8_2_SEVENS);
    }

    const KNOWN_8_2_SEVENS: [[usize; 2]; 8] = [
        [3, 6],
        [3, 7],
        [5, 7],
        [0, 1],
        [5, 6],
        [2, 4],
        [0, 4],
        [1, 2],
    ];

    #[test]
    fn impossible_degrees_are_errors() {
        assert_eq!(
            neighbours(5, 0, [0; 32]).unwrap_err(),
            CryptoError::ZeroDegree { n: 5 }
        );
        assert_eq!(
            neighbours(11, 3, [0; 32]).unwrap_err(),
            CryptoError::OddDegree { n: 11, k: 3 }
        );
    }

    #[test]
    fn uniform_below_covers_range() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let mut counts = [0u32; 6];
        for _ in 0..6000 {
            counts[uniform_below(&mut rng, 6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn permutation_is_a_permutation() {
        let p = permutation(1000, [9; 32]);
        let set: BTreeSet<usize> = p.iter().copied().collect();
        assert_eq!(set.len(), 1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
    }
}
