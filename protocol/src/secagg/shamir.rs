//! t-of-n Shamir sharing of 32-byte secrets (mask keys and self-mask seeds).
//!
//! # Choice of library and field
//!
//! The arithmetic is `vsss-rs` 5 (Michael Lodder; the most used Rust secret-sharing crate,
//! constant-time, with GF(256) and prime-field sharing). Its byte-wise GF(256) mode allows only
//! 255 holders, and consortia of up to a thousand nodes need more, so we share over a prime
//! field instead: the Ed25519 scalar field (order ℓ ≈ 2^252, `curve25519-dalek` 4 through
//! vsss-rs's `curve25519` wrapper — the same curve25519-dalek that x25519-dalek uses). Holder
//! indexes are `u16`, so up to 65 535 holders.
//!
//! A 32-byte secret does not fit below ℓ, so it is cut into two 16-byte halves and each half
//! (a field element below 2^128) is shared on its own polynomial of degree t−1, with the same
//! holder indexes. A share's `y` is therefore two canonical scalars, 64 bytes. Sharing over the
//! whole field keeps Shamir's perfect secrecy: t−1 shares say nothing about either half.
//!
//! Reconstruction interpolates *all* the shares it is given and then checks that both halves came
//! out below 2^128. A corrupt share, or shares of different sharings, gives a uniformly random
//! field element instead, which passes that check with probability about 2^-124; so `combine`
//! reports [`CryptoError::InconsistentShares`] rather than a wrong secret. The check catches
//! accidents (garbled shares, shares of another sharing), not forgery: a holder who deliberately
//! shifts its share by a small amount can shift the result within range. Where the secret has a
//! public commitment, verify it — a rebuilt mask key must reproduce the public key the node
//! advertised ([`AgreementKeyPair::public`](super::crypto::AgreementKeyPair::public)).
//! `combine` does not try subsets to find a bad share.
//!
//! The caller's rand 0.9 CSPRNG reaches vsss-rs (which speaks rand_core 0.6) through
//! `RngBridge`, a forwarding adapter that draws nothing of its own.

use std::collections::HashSet;

use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use vsss_rs::curve25519::WrappedScalar;
use vsss_rs::curve25519_dalek::scalar::Scalar;
use vsss_rs::{IdentifierPrimeField, ParticipantIdGeneratorType, ReadableShareSet};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::crypto::{CryptoError, KEY_LEN};

/// Length of a share's `y`: two canonical little-endian Ed25519 scalars.
pub const SHARE_VALUE_LEN: usize = 64;

/// Length of [`Share::to_bytes`]: a big-endian `u16` index, then the value.
pub const ENCODED_SHARE_LEN: usize = 2 + SHARE_VALUE_LEN;

/// One holder's share of a 32-byte secret; wiped on drop.
///
/// `Debug` prints the index only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// The holder's index, the x coordinate of the share; never 0 (that is the secret).
    pub x: u16,
    /// The share value: [`SHARE_VALUE_LEN`] bytes, the polynomials of the two secret halves
    /// evaluated at `x`, each a canonical little-endian scalar.
    pub y: Vec<u8>,
}

impl Share {
    /// Fixed-width encoding, `x` (big-endian `u16`) then `y`: the plaintext that
    /// [`seal`](super::crypto::seal) encrypts for the holder. Wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(2 + self.y.len()));
        out.extend_from_slice(&self.x.to_be_bytes());
        out.extend_from_slice(&self.y);
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes); refuses a wrong length or index 0. (Whether `y` is
    /// canonical is checked by [`combine`].)
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let Some((x, y)) = bytes.split_first_chunk::<2>() else {
            return Err(CryptoError::ShareLength {
                expected: ENCODED_SHARE_LEN,
                got: bytes.len(),
            });
        };
        if y.len() != SHARE_VALUE_LEN {
            return Err(CryptoError::ShareLength {
                expected: ENCODED_SHARE_LEN,
                got: bytes.len(),
            });
        }
        let x = u16::from_be_bytes(*x);
        if x == 0 {
            return Err(CryptoError::ZeroShareIndex);
        }
        Ok(Self { x, y: y.to_vec() })
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .field("y", &format_args!("<{} bytes>", self.y.len()))
            .finish()
    }
}

/// Splits `secret` into one share per holder, any `threshold` of which rebuild it.
///
/// `holders` are the x coordinates: distinct and nonzero. `threshold` is at least 2 (a threshold
/// of 1 would hand the secret to every holder) and at most `holders.len()`. Shares come back in
/// the order of `holders`.
pub fn split(
    secret: &[u8; KEY_LEN],
    threshold: usize,
    holders: &[u16],
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<Vec<Share>, CryptoError> {
    if threshold < 2 {
        return Err(CryptoError::ThresholdTooSmall { threshold });
    }
    if threshold > holders.len() {
        return Err(CryptoError::ThresholdAboveHolders {
            threshold,
            holders: holders.len(),
        });
    }
    check_indexes(holders.iter().copied())?;
    let ids: Vec<Element> = holders.iter().map(|&x| element_from_index(x)).collect();

    let mut out: Vec<Share> = holders
        .iter()
        .map(|&x| Share {
            x,
            y: Vec::with_capacity(SHARE_VALUE_LEN),
        })
        .collect();
    for half in secret.chunks_exact(HALF_LEN) {
        let mut intercept = Element::from(WrappedScalar(half_to_scalar(half)));
        let result = vsss_rs::shamir::split_secret_with_participant_generator::<RawShare>(
            threshold,
            holders.len(),
            &intercept,
            RngBridge(&mut *rng),
            &[ParticipantIdGeneratorType::list(&ids)],
        );
        intercept.zeroize();
        let mut raw = result.map_err(|e| CryptoError::Sharing(e.to_string()))?;
        if raw.len() != holders.len() {
            zeroize_raw(&mut raw);
            return Err(CryptoError::Sharing(format!(
                "{} shares for {} holders",
                raw.len(),
                holders.len()
            )));
        }
        for (share, (_, value)) in out.iter_mut().zip(&raw) {
            share.y.extend_from_slice(value.0.0.as_bytes());
        }
        zeroize_raw(&mut raw);
    }
    Ok(out)
}

/// Rebuilds the secret from at least `threshold` shares.
///
/// Errors: fewer shares than `threshold` ([`CryptoError::TooFewShares`]), index 0 or a repeated
/// index, a value of the wrong length or not canonical, and shares that do not lie on one sharing
/// ([`CryptoError::InconsistentShares`], see the module docs). All given shares are used.
pub fn combine(
    shares: &[Share],
    threshold: usize,
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    if threshold < 2 {
        return Err(CryptoError::ThresholdTooSmall { threshold });
    }
    if shares.len() < threshold {
        return Err(CryptoError::TooFewShares {
            got: shares.len(),
            threshold,
        });
    }
    check_indexes(shares.iter().map(|s| s.x))?;
    for share in shares {
        if share.y.len() != SHARE_VALUE_LEN {
            return Err(CryptoError::ShareLength {
                expected: SHARE_VALUE_LEN,
                got: share.y.len(),
            });
        }
    }

    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    for (half, out) in secret.chunks_exact_mut(HALF_LEN).enumerate() {
        let mut raw: Vec<RawShare> = Vec::with_capacity(shares.len());
        for share in shares {
            let bytes = &share.y[half * 32..half * 32 + 32];
            let mut repr = [0u8; 32];
            repr.copy_from_slice(bytes);
            let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(repr));
            repr.zeroize();
            let Some(scalar) = scalar else {
                zeroize_raw(&mut raw);
                return Err(CryptoError::NonCanonicalShare);
            };
            raw.push((
                element_from_index(share.x),
                Element::from(WrappedScalar(scalar)),
            ));
        }
        let result = raw.combine();
        zeroize_raw(&mut raw);
        let mut value = result.map_err(|e| CryptoError::Sharing(e.to_string()))?;
        let mut bytes = value.0.0.to_bytes();
        value.zeroize();
        let consistent = bytes[HALF_LEN..].iter().all(|&b| b == 0);
        out.copy_from_slice(&bytes[..HALF_LEN]);
        bytes.zeroize();
        if !consistent {
            return Err(CryptoError::InconsistentShares);
        }
    }
    Ok(secret)
}

// ---- helpers ----------------------------------------------------------------------------------

/// A field element as vsss-rs wants it, for indexes and values alike.
type Element = IdentifierPrimeField<WrappedScalar>;

/// A vsss-rs share: (index, value).
type RawShare = (Element, Element);

/// Bytes of the secret per shared half.
const HALF_LEN: usize = KEY_LEN / 2;

fn element_from_index(x: u16) -> Element {
    Element::from(WrappedScalar::from(u64::from(x)))
}

/// A 16-byte half as a scalar below 2^128 (so no reduction happens).
fn half_to_scalar(half: &[u8]) -> Scalar {
    let mut repr = [0u8; 32];
    repr[..HALF_LEN].copy_from_slice(half);
    let scalar = Scalar::from_bytes_mod_order(repr);
    repr.zeroize();
    scalar
}

fn zeroize_raw(raw: &mut [RawShare]) {
    for (_, value) in raw.iter_mut() {
        value.zeroize();
    }
}

/// Refuses index 0 and repeated indexes.
fn check_indexes(indexes: impl Iterator<Item = u16>) -> Result<(), CryptoError> {
    let mut seen = HashSet::new();
    for x in indexes {
        if x == 0 {
            return Err(CryptoError::ZeroShareIndex);
        }
        if !seen.insert(x) {
            return Err(CryptoError::DuplicateShareIndex { x });
        }
    }
    Ok(())
}

/// Hands the caller's rand 0.9 CSPRNG to vsss-rs, which takes a rand_core 0.6 one. Every call is
/// forwarded unchanged, so the bridge is exactly as strong as the RNG it wraps.
struct RngBridge<'a, R: ?Sized>(&'a mut R);

impl<R: rand::RngCore + ?Sized> rand_core_06::RngCore for RngBridge<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> rand_core_06::CryptoRng for RngBridge<'_, R> {}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn secret(rng: &mut ChaCha20Rng) -> [u8; 32] {
        let mut s = [0u8; 32];
        rand::RngCore::fill_bytes(rng, &mut s);
        s
    }

    #[test]
    fn any_t_of_n_reconstruct() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let secret = secret(&mut rng);
        let holders: Vec<u16> = (1..=7).collect();
        let shares = split(&secret, 4, &holders, &mut rng).unwrap();
        assert_eq!(shares.len(), 7);
        for (share, x) in shares.iter().zip(&holders) {
            assert_eq!(share.x, *x);
            assert_eq!(share.y.len(), SHARE_VALUE_LEN);
        }
        // Every 4-subset and every larger subset of 7.
        for mask in 0u32..(1 << 7) {
            let subset: Vec<Share> = (0..7)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| shares[i].clone())
                .collect();
            if subset.len() >= 4 {
                assert_eq!(*combine(&subset, 4).unwrap(), secret, "subset {mask:07b}");
            }
        }
    }

    #[test]
    fn fewer_than_t_do_not_give_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let secret = secret(&mut rng);
        let holders = [3u16, 9, 27, 81, 243];
        let shares = split(&secret, 3, &holders, &mut rng).unwrap();
        assert_eq!(
            combine(&shares[..2], 3).unwrap_err(),
            CryptoError::TooFewShares {
                got: 2,
                threshold: 3
            }
        );
        // Lying about the threshold does not help: two shares interpolate a line through
        // a degree-2 polynomial, which is not the secret (and is detected as inconsistent).
        assert_ne!(combine(&shares[1..3], 2).ok().map(|s| *s), Some(secret));
        // t−1 genuine shares plus a forged one (right index, wrong value) do not give the secret.
        let mut forged = shares[4].clone();
        forged.y = split(&[7u8; 32], 3, &holders, &mut rng).unwrap()[4]
            .y
            .clone();
        let attempt = combine(&[shares[0].clone(), shares[2].clone(), forged], 3);
        assert_eq!(attempt.unwrap_err(), CryptoError::InconsistentShares);
        // A garbled share (an unrelated field element in its place) is caught too.
        let mut garbled = shares[..3].to_vec();
        garbled[1].y = vec![0x01; SHARE_VALUE_LEN];
        assert_eq!(
            combine(&garbled, 3).unwrap_err(),
            CryptoError::InconsistentShares
        );
        // More than t shares are all used, so one bad share among them is caught as well.
        let mut extra = shares.to_vec();
        extra[3].y = shares[4].y.clone();
        assert_eq!(
            combine(&extra, 3).unwrap_err(),
            CryptoError::InconsistentShares
        );
        // The check is no MAC: a deliberate small offset (one flipped low bit) shifts the result by
        // a small multiple and can pass it; it then yields a wrong secret, never the right one.
        let mut flipped = shares[..3].to_vec();
        flipped[1].y[5] ^= 1;
        assert_ne!(combine(&flipped, 3).ok().map(|s| *s), Some(secret));
    }

    #[test]
    fn t_minus_1_shares_fit_any_secret() {
        // Perfect secrecy, concretely: for t = 2, a share of secret A is equally a share of any
        // other secret B. Through (0, B) and A's share at x = 5 runs a line; its value at x = 6
        // completes a valid sharing of B, and vsss-rs interpolates B from it.
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let a = secret(&mut rng);
        let b = [0x5au8; 32];
        let share = split(&a, 2, &[5, 6], &mut rng).unwrap()[0].clone();
        let mut y6 = Vec::new();
        for half in 0..2 {
            let y5 = Scalar::from_canonical_bytes(share.y[half * 32..][..32].try_into().unwrap())
                .unwrap();
            let b_half = half_to_scalar(&b[half * 16..][..16]);
            let slope = (y5 - b_half) * Scalar::from(5u64).invert();
            y6.extend_from_slice((y5 + slope).as_bytes());
        }
        let completion = Share { x: 6, y: y6 };
        assert_eq!(*combine(&[share, completion], 2).unwrap(), b);
    }

    #[test]
    fn large_consortium_indexes() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let secret = secret(&mut rng);
        let holders: Vec<u16> = (1..=1000).collect();
        let shares = split(&secret, 10, &holders, &mut rng).unwrap();
        let mut picked: Vec<Share> = shares.clone();
        picked.shuffle(&mut rng);
        picked.truncate(10);
        assert_eq!(*combine(&picked, 10).unwrap(), secret);
        let high = split(&secret, 2, &[65535, 40000, 300], &mut rng).unwrap();
        assert_eq!(*combine(&high[..2], 2).unwrap(), secret);
    }

    #[test]
    fn bad_parameters_and_shares_are_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let s = [1u8; 32];
        assert_eq!(
            split(&s, 1, &[1, 2], &mut rng).unwrap_err(),
            CryptoError::ThresholdTooSmall { threshold: 1 }
        );
        assert_eq!(
            split(&s, 3, &[1, 2], &mut rng).unwrap_err(),
            CryptoError::ThresholdAboveHolders {
                threshold: 3,
                holders: 2
            }
        );
        assert_eq!(
            split(&s, 2, &[1, 0, 2], &mut rng).unwrap_err(),
            CryptoError::ZeroShareIndex
        );
        assert_eq!(
            split(&s, 2, &[4, 2, 4], &mut rng).unwrap_err(),
            CryptoError::DuplicateShareIndex { x: 4 }
        );

        let shares = split(&s, 2, &[1, 2, 3], &mut rng).unwrap();
        assert_eq!(
            combine(&[shares[0].clone(), shares[0].clone()], 2).unwrap_err(),
            CryptoError::DuplicateShareIndex { x: 1 }
        );
        let mut short = shares[1].clone();
        short.y.pop();
        assert_eq!(
            combine(&[shares[0].clone(), short], 2).unwrap_err(),
            CryptoError::ShareLength {
                expected: 64,
                got: 63
            }
        );
        let mut zero = shares[1].clone();
        zero.x = 0;
        assert_eq!(
            combine(&[shares[0].clone(), zero], 2).unwrap_err(),
            CryptoError::ZeroShareIndex
        );
        let mut noncanonical = shares[1].clone();
        noncanonical.y[..32].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            combine(&[shares[0].clone(), noncanonical], 2).unwrap_err(),
            CryptoError::NonCanonicalShare
        );
        assert_eq!(
            combine(&shares, 0).unwrap_err(),
            CryptoError::ThresholdTooSmall { threshold: 0 }
        );
        assert_eq!(
            combine(&[], 2).unwrap_err(),
            CryptoError::TooFewShares {
                got: 0,
                threshold: 2
            }
        );
    }

    #[test]
    fn share_encodings_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(16);
        let shares = split(&[9u8; 32], 2, &[258, 3], &mut rng).unwrap();
        let bytes = shares[0].to_bytes();
        assert_eq!(bytes.len(), ENCODED_SHARE_LEN);
        assert_eq!(&bytes[..2], &[1, 2]);
        assert_eq!(Share::from_bytes(&bytes).unwrap(), shares[0]);
        assert_eq!(
            Share::from_bytes(&bytes[..65]).unwrap_err(),
            CryptoError::ShareLength {
                expected: 66,
                got: 65
            }
        );
        assert_eq!(
            Share::from_bytes(&[1]).unwrap_err(),
            CryptoError::ShareLength {
                expected: 66,
                got: 1
            }
        );
        let mut zero = bytes.to_vec();
        zero[..2].copy_from_slice(&[0, 0]);
        assert_eq!(
            Share::from_bytes(&zero).unwrap_err(),
            CryptoError::ZeroShareIndex
        );
        let json = serde_json::to_string(&shares[1]).unwrap();
        let back: Share = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shares[1]);
        assert!(!format!("{:?}", shares[1]).contains(&format!("{:?}", &shares[1].y[..4])));
    }

    #[test]
    fn sharing_is_deterministic_per_rng_and_randomised_across() {
        let s = [3u8; 32];
        let a = split(&s, 2, &[1, 2], &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        let b = split(&s, 2, &[1, 2], &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        let c = split(&s, 2, &[1, 2], &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
