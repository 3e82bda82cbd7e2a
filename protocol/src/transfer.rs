//! Moving a model in chunks: splitting it on the coordinator, reassembling and checking it on the
//! node. Each chunk is checked against its digest in the offer as it arrives, so a push cut
//! short leaves the node with a prefix it can trust ([`PartialAssembly`]), and the next push of
//! the same model starts after it.

use std::fmt;

use crate::messages::{MODEL_CHUNK_LEN, ModelChunk, ModelOffer, PartialModel, RefusalReason};
use crate::model::{Model, ModelHash};

/// SHA-256 of a chunk's bytes.
fn chunk_digest(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Splits a model into an offer (with `first_chunk` 0) and all its chunks for `session` and
/// `round`.
pub fn split_model(model: &Model, session: u64, round: u64) -> (ModelOffer, Vec<ModelChunk>) {
    let offer = model_offer(model, session, round);
    let chunks = (0..offer.chunks)
        .filter_map(|index| model_chunk(model, session, round, index))
        .collect();
    (offer, chunks)
}

/// The offer of `model` (with `first_chunk` 0) for `session` and `round`, each chunk's digest
/// computed from the parameters a chunk at a time: no copy of the model's bytes is made.
pub fn model_offer(model: &Model, session: u64, round: u64) -> ModelOffer {
    let mut bytes = Vec::with_capacity(MODEL_CHUNK_LEN);
    let chunk_digests = model
        .params
        .chunks(MODEL_CHUNK_LEN / 4)
        .map(|piece| {
            bytes.clear();
            bytes.extend(piece.iter().flat_map(|v| v.to_le_bytes()));
            chunk_digest(&bytes)
        })
        .collect::<Vec<_>>();
    ModelOffer {
        session,
        round,
        spec: model.spec.clone(),
        hash: model.hash(),
        params: model.params.len() as u64,
        chunks: chunk_digests.len() as u32,
        first_chunk: 0,
        chunk_digests,
    }
}

/// Chunk `index` of `model` for `session` and `round` (bytes `index · MODEL_CHUNK_LEN` on of
/// its little-endian parameters); `None` past the last chunk.
pub fn model_chunk(model: &Model, session: u64, round: u64, index: u32) -> Option<ModelChunk> {
    let piece = model
        .params
        .chunks(MODEL_CHUNK_LEN / 4)
        .nth(index as usize)?;
    Some(ModelChunk {
        session,
        round,
        index,
        bytes: piece.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

/// The checked first chunks of a model whose push was cut short.
#[derive(Clone)]
pub struct PartialAssembly {
    hash: ModelHash,
    bytes: Vec<u8>,
    chunks: u32,
}

impl fmt::Debug for PartialAssembly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialAssembly")
            .field("hash", &self.hash)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl PartialAssembly {
    /// What a node announces in its `Hello`.
    pub fn announce(&self) -> PartialModel {
        PartialModel {
            hash: self.hash,
            chunks: self.chunks,
        }
    }
}

/// Reassembles a model from its offer and chunks, checking order, sizes, each chunk's digest
/// and the final hash.
pub struct ModelAssembler {
    offer: ModelOffer,
    bytes: Vec<u8>,
    next_index: u32,
}

impl fmt::Debug for ModelAssembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelAssembler")
            .field("hash", &self.offer.hash)
            .field("next_index", &self.next_index)
            .field("chunks", &self.offer.chunks)
            .finish_non_exhaustive()
    }
}

impl ModelAssembler {
    /// Starts from an offer; refuses offers of an invalid or oversized architecture, whose size
    /// does not fit it, or that do not start at the first chunk.
    pub fn new(offer: ModelOffer) -> Result<Self, RefusalReason> {
        Self::resume(offer, None)
    }

    /// Starts from an offer, continuing `partial` when the offer resumes it (same model, first
    /// chunk right after the ones held); an offer from chunk 0 starts afresh.
    pub fn resume(
        offer: ModelOffer,
        partial: Option<PartialAssembly>,
    ) -> Result<Self, RefusalReason> {
        offer.spec.validate().map_err(|e| bad(e.to_string()))?;
        let expected = offer.spec.layout().len() as u64;
        if offer.params != expected {
            return Err(bad(format!(
                "offer announces {} parameters, architecture has {expected}",
                offer.params
            )));
        }
        let byte_len = expected as usize * 4;
        if offer.chunks as usize != byte_len.div_ceil(MODEL_CHUNK_LEN) {
            return Err(bad(format!(
                "offer announces {} chunks for {byte_len} bytes",
                offer.chunks
            )));
        }
        if offer.chunk_digests.len() != offer.chunks as usize {
            return Err(bad(format!(
                "offer has {} chunk digests for {} chunks",
                offer.chunk_digests.len(),
                offer.chunks
            )));
        }
        let (bytes, next_index) = match (offer.first_chunk, partial) {
            (0, _) => (
                // Grown as chunks arrive: an offer alone does not make us reserve the model's
                // size.
                Vec::with_capacity(byte_len.min(MODEL_CHUNK_LEN)),
                0,
            ),
            (first, Some(partial)) if partial.hash == offer.hash && partial.chunks == first => {
                (partial.bytes, first)
            }
            (first, _) => {
                return Err(bad(format!(
                    "offer resumes at chunk {first} of a model this node holds no part of"
                )));
            }
        };
        Ok(Self {
            offer,
            bytes,
            next_index,
        })
    }

    /// Adds the next chunk, once its digest is the offer's.
    pub fn push(&mut self, chunk: ModelChunk) -> Result<(), RefusalReason> {
        if chunk.session != self.offer.session {
            return Err(RefusalReason::WrongSession {
                got: chunk.session,
                expected: self.offer.session,
            });
        }
        if chunk.round != self.offer.round {
            return Err(RefusalReason::WrongRound {
                got: chunk.round,
                expected: self.offer.round,
            });
        }
        if chunk.index != self.next_index || chunk.index >= self.offer.chunks {
            return Err(bad(format!(
                "chunk {} arrived, expected chunk {}",
                chunk.index, self.next_index
            )));
        }
        let total = self.offer.params as usize * 4;
        let room = total - self.bytes.len();
        let expected_len = room.min(MODEL_CHUNK_LEN);
        if chunk.bytes.len() != expected_len {
            return Err(bad(format!(
                "chunk {} has {} bytes, expected {expected_len}",
                chunk.index,
                chunk.bytes.len()
            )));
        }
        if chunk_digest(&chunk.bytes) != self.offer.chunk_digests[chunk.index as usize] {
            return Err(bad(format!(
                "chunk {} does not match its digest in the offer",
                chunk.index
            )));
        }
        self.bytes.extend_from_slice(&chunk.bytes);
        self.next_index += 1;
        Ok(())
    }

    /// Whether every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.next_index == self.offer.chunks
    }

    /// The checked chunks so far, to resume from after a cut; `None` if there are none or the
    /// model is complete.
    pub fn into_partial(self) -> Option<PartialAssembly> {
        (self.next_index > 0 && !self.is_complete()).then_some(PartialAssembly {
            hash: self.offer.hash,
            bytes: self.bytes,
            chunks: self.next_index,
        })
    }

    /// The model, once complete and only if its hash matches the offer.
    pub fn finish(self) -> Result<Model, RefusalReason> {
        if !self.is_complete() {
            return Err(bad(format!(
                "model ended after {} of {} chunks",
                self.next_index, self.offer.chunks
            )));
        }
        let params: Vec<f32> = self
            .bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let model = Model::new(self.offer.spec.clone(), params).map_err(|e| bad(e.to_string()))?;
        let hash: ModelHash = model.hash();
        if hash != self.offer.hash {
            return Err(bad(format!(
                "model hash {hash} differs from the announced {}",
                self.offer.hash
            )));
        }
        Ok(model)
    }
}

fn bad(detail: String) -> RefusalReason {
    RefusalReason::BadModel { detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, ModelSpec};

    fn big_model() -> Model {
        // Over one chunk: 300 inputs × 1000 hidden ≈ 1.2 MB of parameters.
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![1000] },
            input_dim: 300,
        };
        let params = spec.initial_parameters(3);
        Model::new(spec, params).unwrap()
    }

    #[test]
    fn chunks_reassemble_to_the_same_model() {
        let model = big_model();
        let (offer, chunks) = split_model(&model, 9, 4);
        assert!(chunks.len() > 1);
        let mut assembler = ModelAssembler::new(offer).unwrap();
        for chunk in chunks {
            assembler.push(chunk).unwrap();
        }
        assert_eq!(assembler.finish().unwrap(), model);
    }

    #[test]
    fn tampered_reordered_or_foreign_chunks_are_refused() {
        let model = big_model();
        let (offer, chunks) = split_model(&model, 9, 4);

        let mut assembler = ModelAssembler::new(offer.clone()).unwrap();
        assert!(matches!(
            assembler.push(chunks[1].clone()),
            Err(RefusalReason::BadModel { .. })
        ));

        let mut assembler = ModelAssembler::new(offer.clone()).unwrap();
        let mut stale = chunks[0].clone();
        stale.round = 3;
        assert!(matches!(
            assembler.push(stale),
            Err(RefusalReason::WrongRound {
                got: 3,
                expected: 4
            })
        ));

        // A tampered chunk is refused as it arrives, not only once the whole model is in.
        let mut assembler = ModelAssembler::new(offer.clone()).unwrap();
        let mut tampered = chunks[0].clone();
        tampered.bytes[0] ^= 1;
        assert!(matches!(
            assembler.push(tampered),
            Err(RefusalReason::BadModel { .. })
        ));

        // Digests that lie about the model pass chunk by chunk and fail the final hash.
        let mut lying_digests = offer.clone();
        let mut forged = chunks.clone();
        forged[0].bytes[0] ^= 1;
        lying_digests.chunk_digests[0] = chunk_digest(&forged[0].bytes);
        let mut assembler = ModelAssembler::new(lying_digests).unwrap();
        for chunk in forged {
            assembler.push(chunk).unwrap();
        }
        assert!(matches!(
            assembler.finish(),
            Err(RefusalReason::BadModel { .. })
        ));

        let mut lying = offer;
        lying.params += 1;
        assert!(ModelAssembler::new(lying).is_err());
    }

    /// Found by the `model_transfer` fuzz target: an offer whose architecture's parameter count
    /// overflows panicked in `ModelAssembler::new` (and, in release builds, wrapped to a small
    /// count that the rest of the checks accepted).
    #[test]
    fn regression_fuzz_offer_with_overflowing_architecture_is_refused() {
        let spec = ModelSpec {
            kind: ModelKind::Mlp {
                hidden: vec![1 << 40, 1 << 40],
            },
            input_dim: 1 << 40,
        };
        let offer = ModelOffer {
            session: 1,
            round: 1,
            spec,
            hash: ModelHash([0; 32]),
            params: 16,
            chunks: 1,
            first_chunk: 0,
            chunk_digests: vec![[0; 32]],
        };
        assert!(matches!(
            ModelAssembler::new(offer),
            Err(RefusalReason::BadModel { .. })
        ));
    }

    #[test]
    fn a_push_cut_short_resumes_after_the_checked_chunks_of_the_same_model_only() {
        let model = big_model();
        let (offer, chunks) = split_model(&model, 9, 4);
        let mut assembler = ModelAssembler::new(offer.clone()).unwrap();
        assembler.push(chunks[0].clone()).unwrap();
        let partial = assembler.into_partial().expect("one chunk held");
        assert_eq!(
            partial.announce(),
            PartialModel {
                hash: model.hash(),
                chunks: 1
            }
        );

        // The same model, offered again (in a later attempt: another round number) from chunk 1.
        let (mut again, rest) = split_model(&model, 9, 5);
        again.first_chunk = 1;
        let mut resumed = ModelAssembler::resume(again.clone(), Some(partial.clone())).unwrap();
        for chunk in rest.into_iter().skip(1) {
            resumed.push(chunk).unwrap();
        }
        assert_eq!(resumed.finish().unwrap(), model);

        // Nothing held, another model, or a resume point other than the chunks held: refused.
        assert!(ModelAssembler::resume(again.clone(), None).is_err());
        let mut other = again.clone();
        other.hash = ModelHash([7; 32]);
        assert!(ModelAssembler::resume(other, Some(partial.clone())).is_err());
        let mut skipping = again;
        skipping.first_chunk = 0;
        let fresh = ModelAssembler::resume(skipping, Some(partial)).unwrap();
        assert_eq!(fresh.next_index, 0, "an offer from chunk 0 starts afresh");

        // A complete or empty assembly leaves nothing to resume.
        assert!(ModelAssembler::new(offer).unwrap().into_partial().is_none());
    }
}
