//! A model offer and its chunks from the coordinator (`ModelAssembler`), and model bytes turned
//! into a `Model`.
//!
//! Invariants: no panic and no allocation beyond what arrived; a model is accepted only if its
//! hash is the announced one, and splitting it again gives back the offer and the chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_fuzz::take;
use medfed_protocol::messages::{ModelChunk, ModelOffer};
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::transfer::{ModelAssembler, split_model};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Some(((offer, chunks), _)) = take::<(ModelOffer, Vec<ModelChunk>)>(rest) else {
            return;
        };
        let Ok(mut assembler) = ModelAssembler::new(offer.clone()) else {
            return;
        };
        for chunk in &chunks {
            if assembler.push(chunk.clone()).is_err() {
                return;
            }
        }
        let Ok(model) = assembler.finish() else {
            return;
        };
        assert_eq!(model.hash(), offer.hash);
        let (offer_again, chunks_again) = split_model(&model, offer.session, offer.round);
        assert_eq!(offer_again, offer);
        assert_eq!(chunks_again, chunks);
    } else {
        let Some(((spec, params), _)) = take::<(ModelSpec, Vec<f32>)>(rest) else {
            return;
        };
        let Ok(model) = Model::new(spec, params) else {
            return;
        };
        assert!(model.params.iter().all(|v| v.is_finite()));
        assert_eq!(model.params.len(), model.spec.layout().len());
        let _ = model.hash();
    }
});
