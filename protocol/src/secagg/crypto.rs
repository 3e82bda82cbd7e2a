//! Cryptographic primitives of secure aggregation: X25519 key agreement, HKDF-SHA256 key
//! derivation, ChaCha20-Poly1305 encryption of Shamir shares, and ChaCha20 masks over Z(2^32).
//!
//! Every primitive comes from a vetted crate; nothing here is a home-made cipher:
//!
//! | job                         | crate                                   |
//! | --------------------------- | --------------------------------------- |
//! | X25519 (RFC 7748)           | `x25519-dalek` 2 (`StaticSecret`)       |
//! | HKDF-SHA256 (RFC 5869)      | `ring::hkdf`                            |
//! | ChaCha20-Poly1305 (RFC 8439)| `ring::aead`                            |
//! | ChaCha20 keystream (masks)  | `chacha20` (RustCrypto, IETF variant)   |
//!
//! The module draws no randomness of its own: [`AgreementKeyPair::generate`] takes the caller's
//! CSPRNG, so a seeded RNG makes a whole round reproducible in tests. Secret material is wiped on
//! drop ([`Zeroizing`], `ZeroizeOnDrop`).
//!
//! # Keys are single-use
//!
//! [`seal`] uses an all-zero nonce, which is safe only because each key encrypts exactly one
//! message. X25519 is symmetric — `u` and `v` compute the same shared secret — so the `info` given
//! to [`AgreementKeyPair::derive`] for an encryption key must name the *direction* (purpose,
//! round, sender, receiver), never the unordered pair.
//!
//! [`CryptoError`], the error of every `secagg` building block, lives here too.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use rand::CryptoRng;
use ring::{aead, hkdf};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// Length in bytes of every secret key, public key, mask seed and derived key in `secagg`.
pub const KEY_LEN: usize = 32;

/// Length in bytes of the Poly1305 tag that [`seal`] appends.
pub const TAG_LEN: usize = 16;

/// HKDF salt of every key [`AgreementKeyPair::derive`] produces; versioned so that a future change
/// of construction cannot collide with keys derived today.
pub const HKDF_SALT: &[u8] = b"medfed-secagg-v1";

/// Errors of the secure-aggregation building blocks (`crypto`, `shamir`, `fixed_point`, `graph`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The peer's public key is a low-order point, so the X25519 shared secret is all zero.
    #[error("peer public key is a low-order point (all-zero X25519 shared secret)")]
    LowOrderPoint,
    /// HKDF was asked for more output than it can produce (255 · 32 bytes).
    #[error("HKDF-SHA256 cannot produce {requested} bytes (at most 8160)")]
    HkdfLength {
        /// Bytes asked for.
        requested: usize,
    },
    /// The plaintext is too long for ChaCha20-Poly1305.
    #[error("plaintext of {len} bytes is too long for ChaCha20-Poly1305")]
    SealFailed {
        /// Plaintext length in bytes.
        len: usize,
    },
    /// Decryption failed: wrong key, wrong associated data, or a tampered or truncated ciphertext.
    #[error("ciphertext failed authentication")]
    OpenFailed,
    /// A Shamir threshold below 2 (one share alone would reveal the secret).
    #[error("Shamir threshold {threshold} is below 2")]
    ThresholdTooSmall {
        /// The threshold asked for.
        threshold: usize,
    },
    /// A Shamir threshold above the number of share holders.
    #[error("Shamir threshold {threshold} exceeds the {holders} share holders")]
    ThresholdAboveHolders {
        /// The threshold asked for.
        threshold: usize,
        /// Number of holders.
        holders: usize,
    },
    /// Fewer shares than the threshold were offered for reconstruction.
    #[error("{got} shares offered, threshold is {threshold}")]
    TooFewShares {
        /// Shares offered.
        got: usize,
        /// Threshold of the sharing.
        threshold: usize,
    },
    /// Share index 0 is reserved for the secret itself.
    #[error("share index 0 is reserved for the secret")]
    ZeroShareIndex,
    /// Two shares (or two holders) carry the same index.
    #[error("share index {x} appears twice")]
    DuplicateShareIndex {
        /// The repeated index.
        x: u16,
    },
    /// A share value of the wrong length.
    #[error("share value is {got} bytes, expected {expected}")]
    ShareLength {
        /// Expected length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// A share value that is not a canonical field element.
    #[error("share value is not a canonical field element")]
    NonCanonicalShare,
    /// The shares do not lie on one polynomial of the sharing's form: at least one is corrupt,
    /// or they come from different sharings.
    #[error("shares are inconsistent: at least one is corrupt or from another sharing")]
    InconsistentShares,
    /// The secret-sharing library refused an operation our own checks let through.
    #[error("secret sharing failed: {0}")]
    Sharing(String),
    /// A fixed-point configuration that cannot encode anything: the clip bound must be finite and
    /// positive, and `clip · 2^fractional_bits` must stay below 2^31.
    #[error(
        "invalid fixed point: clip {clip}, {fractional_bits} fractional bits \
         (need 0 < clip and clip · 2^bits < 2^31)"
    )]
    InvalidFixedPoint {
        /// The clip bound B.
        clip: f64,
        /// Number of fractional bits.
        fractional_bits: u32,
    },
    /// The sum of `n` encoded values could leave the signed 32-bit range.
    #[error(
        "{n} values clipped to ±{clip} with {fractional_bits} fractional bits can sum to \
         {n} · {max_encoded} = {worst_sum}, which reaches 2^31 = 2147483648"
    )]
    Capacity {
        /// Number of values summed.
        n: usize,
        /// The clip bound B.
        clip: f64,
        /// Number of fractional bits.
        fractional_bits: u32,
        /// Largest magnitude one encoded value can take, `ceil(B · 2^bits)`.
        max_encoded: u64,
        /// `n · max_encoded`.
        worst_sum: u128,
    },
    /// A value to encode is NaN or infinite.
    #[error("value at index {index} is not finite")]
    NonFiniteValue {
        /// Position of the value in the input.
        index: usize,
    },
    /// A pairing graph with no neighbours for some node (degree 0 with more than one node).
    #[error("pairing degree 0 leaves {n} nodes without neighbours")]
    ZeroDegree {
        /// Number of nodes.
        n: usize,
    },
    /// No k-regular graph exists on n nodes when both are odd.
    #[error("no {k}-regular graph exists on {n} nodes (n · k is odd)")]
    OddDegree {
        /// Number of nodes.
        n: usize,
        /// Degree asked for.
        k: usize,
    },
}

/// An X25519 key pair; the secret is zeroized on drop. Clone is deliberately not derived.
///
/// The secret is kept as the 32 bytes it was built from (clamping happens inside each scalar
/// multiplication), so [`secret_bytes`](Self::secret_bytes) and
/// [`from_secret_bytes`](Self::from_secret_bytes) round-trip exactly: that is how the survivors
/// rebuild a dropped node's mask key from its Shamir shares.
pub struct AgreementKeyPair {
    /// The secret scalar bytes; `StaticSecret` is `ZeroizeOnDrop` (x25519-dalek `zeroize`).
    secret: StaticSecret,
    /// The public point, cached.
    public: PublicKey,
}

impl AgreementKeyPair {
    /// Draws a fresh key pair from the caller's CSPRNG.
    ///
    /// x25519-dalek 2 speaks rand_core 0.6 while the workspace uses rand 0.9, so no RNG crosses
    /// the boundary: 32 bytes are drawn here and handed to `StaticSecret::from`.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_secret_bytes(*bytes)
    }

    /// Rebuilds a key pair from its 32 secret bytes (as returned by
    /// [`secret_bytes`](Self::secret_bytes) or reconstructed from Shamir shares).
    pub fn from_secret_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The 32 secret bytes, for Shamir sharing; wiped when the returned value drops.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key (an X25519 u-coordinate, little-endian).
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public.to_bytes()
    }

    /// X25519(secret, peer) then HKDF-SHA256 (salt [`HKDF_SALT`], info = `info`) → a 32-byte key.
    ///
    /// Refuses an all-zero shared secret (a low-order peer point) with
    /// [`CryptoError::LowOrderPoint`]. Both sides of a pair compute the same key for the same
    /// `info`, so `info` must say what the key is for and, for keys that encrypt, in which
    /// direction (sender, then receiver).
    pub fn derive(
        &self,
        peer_public: &[u8; KEY_LEN],
        info: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let shared = self.agree(peer_public)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hkdf_sha256(HKDF_SALT, shared.as_ref(), info, key.as_mut())?;
        Ok(key)
    }

    /// The raw X25519 shared secret, refusing the all-zero result of a low-order peer point.
    pub(crate) fn agree(
        &self,
        peer_public: &[u8; KEY_LEN],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer_public));
        if !shared.was_contributory() {
            return Err(CryptoError::LowOrderPoint);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl std::fmt::Debug for AgreementKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgreementKeyPair")
            .field("public", &hex::encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// ChaCha20-Poly1305 (ring) of a share for one receiver; returns ciphertext ‖ 16-byte tag.
///
/// The nonce is all zero. That is sound only because every key seals exactly one message: keys
/// come from [`AgreementKeyPair::derive`] over X25519 key pairs that are fresh each round, with an
/// `info` naming round, sender and receiver in that order, and each node sends each peer one share
/// message per round. A random nonce would need the RNG here and 12 more bytes on the wire and
/// protect nothing more under that invariant. `aad` is built by the caller from round, sender and
/// receiver.
pub fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    seal_with_nonce(key, [0u8; aead::NONCE_LEN], aad, plaintext)
}

/// Reverses [`seal`]; any tampering, a wrong key or different `aad` gives
/// [`CryptoError::OpenFailed`]. The plaintext is wiped when dropped.
pub fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_with_nonce(key, [0u8; aead::NONCE_LEN], aad, ciphertext)
}

/// Adds the ChaCha20 keystream of `seed` (nonce 0, block counter from 0), read as little-endian
/// `u32` words, to `values`, wrapping in Z(2^32).
///
/// Works on 4 KiB of keystream at a time in one reused, zeroized-on-drop buffer. A mask longer
/// than the ChaCha20 counter allows (2^36 words, 256 GiB) panics inside the cipher; no model comes
/// near it.
pub fn add_mask(seed: &[u8; KEY_LEN], values: &mut [u32]) {
    apply_mask(seed, values, u32::wrapping_add);
}

/// Subtracts the mask that [`add_mask`] adds with the same `seed`.
pub fn subtract_mask(seed: &[u8; KEY_LEN], values: &mut [u32]) {
    apply_mask(seed, values, u32::wrapping_sub);
}

/// The raw ChaCha20 keystream of `seed` (nonce 0, counter from 0) into `out`: the reference
/// throughput for [`add_mask`] in benchmarks.
pub fn keystream(seed: &[u8; KEY_LEN], out: &mut [u8]) {
    chacha20_keystream(seed, &[0u8; 12], 0, out);
}

// ---- helpers ----------------------------------------------------------------------------------

/// Words of keystream generated per call to the cipher (4 KiB).
const MASK_CHUNK_WORDS: usize = 1024;

/// `op` is generic (not a `fn` pointer) so that it inlines and the word loop vectorises.
fn apply_mask(seed: &[u8; KEY_LEN], values: &mut [u32], op: impl Fn(u32, u32) -> u32) {
    let mut cipher = ChaCha20::new(seed.into(), &[0u8; 12].into());
    let mut buf = Zeroizing::new([0u8; MASK_CHUNK_WORDS * 4]);
    for chunk in values.chunks_mut(MASK_CHUNK_WORDS) {
        let bytes = &mut buf[..chunk.len() * 4];
        cipher.write_keystream(bytes);
        let (words, _) = bytes.as_chunks::<4>();
        for (value, word) in chunk.iter_mut().zip(words) {
            *value = op(*value, u32::from_le_bytes(*word));
        }
    }
}

/// ChaCha20 (RFC 8439) keystream for `key`, `nonce`, starting at block `counter`, into `out`.
fn chacha20_keystream(key: &[u8; KEY_LEN], nonce: &[u8; 12], counter: u32, out: &mut [u8]) {
    let mut cipher = ChaCha20::new(key.into(), nonce.into());
    cipher.seek(u64::from(counter) * 64);
    cipher.write_keystream(out);
}

/// HKDF-SHA256 (RFC 5869) extract-then-expand of `ikm` into `out`.
pub(crate) fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    /// ring asks for the output length through this trait.
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let requested = out.len();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(requested))
        .map_err(|_| CryptoError::HkdfLength { requested })?;
    okm.fill(out)
        .map_err(|_| CryptoError::HkdfLength { requested })
}

fn aead_key(key: &[u8; KEY_LEN]) -> aead::LessSafeKey {
    // Invariant: CHACHA20_POLY1305 takes exactly KEY_LEN (32) bytes, so `new` cannot fail.
    let unbound = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
        .expect("ChaCha20-Poly1305 key is 32 bytes");
    aead::LessSafeKey::new(unbound)
}

fn seal_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: [u8; aead::NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    in_out.extend_from_slice(plaintext);
    aead_key(key)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| {
            in_out.zeroize();
            CryptoError::SealFailed {
                len: plaintext.len(),
            }
        })?;
    Ok(in_out)
}

fn open_with_nonce(
    key: &[u8; KEY_LEN],
    nonce: [u8; aead::NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let len = aead_key(key)
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| CryptoError::OpenFailed)?
        .len();
    in_out.truncate(len);
    Ok(in_out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        let v = hex::decode(s).unwrap();
        v.try_into().unwrap()
    }

    fn hv(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// Scalar multiplication through the crate's key type: `from_secret_bytes`, then `agree`.
    fn x25519(scalar: [u8; 32], u: [u8; 32]) -> [u8; 32] {
        *AgreementKeyPair::from_secret_bytes(scalar)
            .agree(&u)
            .unwrap()
    }

    #[test]
    fn rfc7748_5_2_x25519_vectors() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (scalar, u, out) in cases {
            assert_eq!(x25519(h(scalar), h(u)), h::<32>(out));
        }
    }

    #[test]
    fn rfc7748_5_2_iterated_x25519() {
        let mut k: [u8; 32] = h("0900000000000000000000000000000000000000000000000000000000000000");
        let mut u = k;
        for i in 1..=1000 {
            let next = x25519(k, u);
            u = k;
            k = next;
            if i == 1 {
                assert_eq!(
                    k,
                    h::<32>("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            h::<32>("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    #[test]
    fn rfc7748_6_1_diffie_hellman() {
        let alice = AgreementKeyPair::from_secret_bytes(h(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = AgreementKeyPair::from_secret_bytes(h(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public(),
            h::<32>("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public(),
            h::<32>("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = h::<32>("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*alice.agree(&bob.public()).unwrap(), shared);
        assert_eq!(*bob.agree(&alice.public()).unwrap(), shared);
        // `derive` is HKDF over exactly that shared secret.
        let mut expected = [0u8; 32];
        hkdf_sha256(HKDF_SALT, &shared, b"info", &mut expected).unwrap();
        assert_eq!(*alice.derive(&bob.public(), b"info").unwrap(), expected);
        assert_eq!(*bob.derive(&alice.public(), b"info").unwrap(), expected);
    }

    #[test]
    fn secret_bytes_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let pair = AgreementKeyPair::generate(&mut rng);
        let rebuilt = AgreementKeyPair::from_secret_bytes(*pair.secret_bytes());
        assert_eq!(rebuilt.public(), pair.public());
        let peer = AgreementKeyPair::generate(&mut rng);
        assert_eq!(
            *rebuilt.derive(&peer.public(), b"x").unwrap(),
            *pair.derive(&peer.public(), b"x").unwrap()
        );
        assert!(!format!("{pair:?}").contains(&hex::encode(*pair.secret_bytes())));
    }

    #[test]
    fn derive_refuses_low_order_points() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let pair = AgreementKeyPair::generate(&mut rng);
        // The identity (u = 0) and the order-2 point (u = 1) give an all-zero shared secret.
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one] {
            assert_eq!(
                pair.derive(&low, b"x").unwrap_err(),
                CryptoError::LowOrderPoint
            );
        }
    }

    #[test]
    fn derive_separates_info() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b) = (
            AgreementKeyPair::generate(&mut rng),
            AgreementKeyPair::generate(&mut rng),
        );
        // Directional infos, as the share-encryption keys use: u→v and v→u differ.
        let ab = a.derive(&b.public(), b"share r3 0->1").unwrap();
        let ba = b.derive(&a.public(), b"share r3 1->0").unwrap();
        let ab_seen_by_b = b.derive(&a.public(), b"share r3 0->1").unwrap();
        assert_eq!(*ab, *ab_seen_by_b);
        assert_ne!(*ab, *ba);
        assert_ne!(*ab, *a.derive(&b.public(), b"share r4 0->1").unwrap());
    }

    #[test]
    fn rfc5869_hkdf_sha256_test_cases_1_to_3() {
        let ikm1 = [0x0bu8; 22];
        let ikm2: Vec<u8> = (0x00..=0x4f).collect();
        let salt2: Vec<u8> = (0x60..=0xaf).collect();
        let info2: Vec<u8> = (0xb0..=0xff).collect();
        /// (IKM, salt, info, OKM hex)
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
        let cases: [Case<'_>; 3] = [
            (
                &ikm1,
                &hv("000102030405060708090a0b0c"),
                &hv("f0f1f2f3f4f5f6f7f8f9"),
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                 34007208d5b887185865",
            ),
            (
                &ikm2,
                &salt2,
                &info2,
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
                 59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
                 cc30c58179ec3e87c14c01d5c1f3434f1d87",
            ),
            (
                &ikm1,
                &[],
                &[],
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d\
                 9d201395faa4b61a96c8",
            ),
        ];
        for (ikm, salt, info, okm) in cases {
            let expected = hv(okm);
            let mut out = vec![0u8; expected.len()];
            hkdf_sha256(salt, ikm, info, &mut out).unwrap();
            assert_eq!(out, expected);
        }
        let mut too_long = vec![0u8; 255 * 32 + 1];
        assert_eq!(
            hkdf_sha256(b"s", b"k", b"i", &mut too_long).unwrap_err(),
            CryptoError::HkdfLength { requested: 8161 }
        );
    }

    const SUNSCREEN: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you \
        only one tip for the future, sunscreen would be it.";

    #[test]
    fn rfc8439_2_3_2_block_function() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut block = [0u8; 64];
        chacha20_keystream(&key, &h("000000090000004a00000000"), 1, &mut block);
        assert_eq!(
            block.to_vec(),
            hv(
                "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e\
                d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
            )
        );
    }

    #[test]
    fn rfc8439_2_4_2_encryption() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        // Encryption is plaintext XOR the keystream our mask helper produces.
        let mut data = vec![0u8; SUNSCREEN.len()];
        chacha20_keystream(&key, &h("000000000000004a00000000"), 1, &mut data);
        for (d, p) in data.iter_mut().zip(SUNSCREEN) {
            *d ^= p;
        }
        assert_eq!(
            data,
            hv(
                "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b\
                f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8\
                07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736\
                5af90bbf74a35be6b40b8eedf2785e42874d"
            )
        );
    }

    #[test]
    fn keystream_is_nonce_zero_counter_zero() {
        let seed = [0x42u8; 32];
        let mut a = vec![0u8; 200];
        let mut b = vec![0xffu8; 200];
        keystream(&seed, &mut a);
        chacha20_keystream(&seed, &[0u8; 12], 0, &mut b);
        assert_eq!(a, b);
        // The mask is that keystream read as little-endian words.
        let mut words = vec![0u32; 50];
        add_mask(&seed, &mut words);
        let expected: Vec<u32> = a
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words, expected);
    }

    #[test]
    fn rfc8439_2_8_2_aead() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = h("070000004041424344454647");
        let aad = hv("50515253c0c1c2c3c4c5c6c7");
        let expected = hv(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
             3ff4def08e4b7a9de576d26586cec64b6116\
             1ae10b594f09e26a7e902ecbd0600691",
        );
        let sealed = seal_with_nonce(&key, nonce, &aad, SUNSCREEN).unwrap();
        assert_eq!(sealed, expected);
        let opened = open_with_nonce(&key, nonce, &aad, &sealed).unwrap();
        assert_eq!(opened.as_slice(), SUNSCREEN);
    }

    #[test]
    fn seal_open_round_trip_and_tampering() {
        let key = [9u8; 32];
        let aad = b"round 5, 1 -> 2".to_vec();
        let sealed = seal(&key, &aad, b"a share").unwrap();
        assert_eq!(sealed.len(), 7 + TAG_LEN);
        assert_eq!(open(&key, &aad, &sealed).unwrap().as_slice(), b"a share");

        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&key, &aad, &bad).unwrap_err(), CryptoError::OpenFailed);
        }
        let other_aad = b"round 5, 2 -> 1".to_vec();
        assert_eq!(
            open(&key, &other_aad, &sealed).unwrap_err(),
            CryptoError::OpenFailed
        );
        assert_eq!(
            open(&[8u8; 32], &aad, &sealed).unwrap_err(),
            CryptoError::OpenFailed
        );
        for len in 0..TAG_LEN {
            assert_eq!(
                open(&key, &aad, &sealed[..len]).unwrap_err(),
                CryptoError::OpenFailed
            );
        }
        assert_eq!(
            open(&key, &aad, &sealed[..sealed.len() - 1]).unwrap_err(),
            CryptoError::OpenFailed
        );
        // An empty plaintext still authenticates.
        let empty = seal(&key, &aad, &[]).unwrap();
        assert!(open(&key, &aad, &empty).unwrap().is_empty());
    }

    #[test]
    fn masks_cancel_and_differ() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // Lengths around the 16-word block and the 1024-word buffer, none a multiple of 16 but one.
        for len in [0usize, 1, 15, 17, 1023, 1024, 1025, 3001] {
            let original: Vec<u32> = (0..len).map(|_| rand::Rng::random(&mut rng)).collect();
            let mut values = original.clone();
            add_mask(&[1u8; 32], &mut values);
            if len > 1 {
                assert_ne!(values, original);
            }
            subtract_mask(&[1u8; 32], &mut values);
            assert_eq!(values, original);
        }
        let mut a = vec![0u32; 1000];
        let mut b = vec![0u32; 1000];
        add_mask(&[1u8; 32], &mut a);
        add_mask(&[2u8; 32], &mut b);
        assert_ne!(a, b);
        // Pairwise masks: u adds, v subtracts the same seed, and the sum is unmasked.
        let (x, y) = (vec![5u32; 33], vec![u32::MAX; 33]);
        let (mut mx, mut my) = (x.clone(), y.clone());
        add_mask(&[7u8; 32], &mut mx);
        subtract_mask(&[7u8; 32], &mut my);
        let sum: Vec<u32> = mx
            .iter()
            .zip(&my)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        let expected: Vec<u32> = x.iter().zip(&y).map(|(a, b)| a.wrapping_add(*b)).collect();
        assert_eq!(sum, expected);
    }

    #[test]
    fn mask_prefix_is_stable_across_chunking() {
        // Masking 1500 values equals masking the first 1024 and reading on: one continuous stream.
        let seed = [0x11u8; 32];
        let mut long = vec![0u32; 1500];
        add_mask(&seed, &mut long);
        let mut bytes = vec![0u8; 6000];
        keystream(&seed, &mut bytes);
        let expected: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(long, expected);
    }
}
