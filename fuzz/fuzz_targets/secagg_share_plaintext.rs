//! A share plaintext from a peer, after AEAD decryption: the fuzzer writes the plaintext that a
//! neighbour seals, correctly, for a real participant (`ExpectDelivery::handle_delivery`), then the
//! participant signs the survivor set and is asked to unmask.
//!
//! Participant 1 is the real state machine; participants 2 and 3 are simulated with their own key
//! pairs; 2 sends the fuzzed plaintext, 3 an honest-looking one.
//!
//! Invariants: no panic; a plaintext is accepted only if it names sender 2, receiver 1 and holds
//! shares at x = 1; after acceptance, the unmask response reveals exactly one kind of share for
//! each peer, and the share it reveals for a dropped peer is the one it received; a second unmask
//! request is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medfed_fuzz::{
    AcceptAll, FakePeer, NoSigner, ROUND, SESSION, VECTOR_LEN, accept_all, put, round_params,
    share_context, take,
};
use medfed_protocol::secagg::crypto::seal;
use medfed_protocol::secagg::shamir::{SHARE_VALUE_LEN, Share};
use medfed_protocol::secagg::{
    ConsistencyRequest, DirectoryEntry, EncryptedShare, ExpectDirectory, KeyDirectory,
    ParticipantState, SecAggError, ShareDelivery, UnmaskRequest,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, plaintext)) = data.split_first() else {
        return;
    };
    let mut rng = medfed_fuzz::rng(u64::from(mode));
    let params = round_params(3, 2);
    let (state, own) =
        ExpectDirectory::new(params.clone(), 1, vec![7; VECTOR_LEN], &NoSigner, &mut rng).unwrap();
    let peers = [FakePeer::new(&mut rng), FakePeer::new(&mut rng)];
    let mut entries = vec![DirectoryEntry {
        keys: own.clone(),
        certificate: vec![1],
    }];
    for (i, peer) in peers.iter().enumerate() {
        entries.push(DirectoryEntry {
            keys: peer.advertisement(i as u16 + 2, &params),
            certificate: vec![i as u8 + 2],
        });
    }
    let directory = KeyDirectory {
        session: SESSION,
        round: ROUND,
        entries,
    };
    let mut state = ParticipantState::Directory(state);
    state
        .handle_directory(&directory, &AcceptAll, &mut rng)
        .expect("honest directory");

    // Participant 3's honest-looking share plaintext: (from, to, mask-key share, self-mask share).
    let honest = {
        let share = Share {
            x: 1,
            y: vec![0; SHARE_VALUE_LEN],
        };
        let mut out = Vec::new();
        put(&(3u16, 1u16, share.clone(), share), &mut out);
        out
    };
    let mut shares = Vec::new();
    for (from, bytes) in [(2u16, plaintext), (3u16, honest.as_slice())] {
        let peer = &peers[usize::from(from) - 2];
        let context = share_context(from, 1);
        let key = peer.cipher.derive(&own.cipher_public, &context).unwrap();
        shares.push(EncryptedShare {
            from,
            to: 1,
            ciphertext: seal(&key, &context, bytes).unwrap(),
        });
    }
    if mode & 1 == 1 {
        shares.reverse();
    }
    let delivery = ShareDelivery {
        session: SESSION,
        round: ROUND,
        shares,
        senders: vec![1, 2, 3],
    };
    match state.handle_delivery(&delivery) {
        Ok(masked) => assert_eq!(masked.values.len(), VECTOR_LEN),
        Err(SecAggError::ShareAuthentication { from: 2 }) => return,
        Err(e) => panic!("a bad plaintext from 2 must be an authentication failure, got {e}"),
    }
    // Accepted: it must have been a well-formed plaintext naming 2 → 1 at x = 1.
    let ((from, to, mask_key, self_mask), rest) =
        take::<(u16, u16, Share, Share)>(plaintext).expect("accepted plaintext decodes");
    assert!(rest.is_empty() && from == 2 && to == 1 && mask_key.x == 1);

    // Participant 2 dropped (mode bit 1) or survived.
    let dropped = mode & 2 == 2;
    let survivors = if dropped { vec![1, 3] } else { vec![1, 2, 3] };
    let consistency = ConsistencyRequest {
        session: SESSION,
        round: ROUND,
        survivors: survivors.clone(),
    };
    state
        .handle_consistency(&consistency, &NoSigner, &mut accept_all)
        .expect("honest consistency request");
    let request = UnmaskRequest {
        session: SESSION,
        round: ROUND,
        signatures: survivors.iter().map(|&i| (i, vec![0xAA; 64])).collect(),
        survivors,
    };
    let response = state
        .handle_unmask(&request, &AcceptAll, &mut accept_all)
        .expect("honest unmask request");
    for peer in 1..=3u16 {
        let self_masks = response
            .self_mask_shares
            .iter()
            .filter(|(p, _)| *p == peer)
            .count();
        let mask_keys = response
            .mask_key_shares
            .iter()
            .filter(|(p, _)| *p == peer)
            .count();
        assert_eq!(
            self_masks + mask_keys,
            1,
            "peer {peer}: {self_masks} + {mask_keys} shares"
        );
    }
    let revealed = if dropped {
        &response.mask_key_shares
    } else {
        &response.self_mask_shares
    };
    let share_of_2 = &revealed
        .iter()
        .find(|(p, _)| *p == 2)
        .expect("share of 2")
        .1;
    assert_eq!(share_of_2, if dropped { &mask_key } else { &self_mask });
    assert!(
        state
            .handle_unmask(&request, &AcceptAll, &mut accept_all)
            .is_err(),
        "second unmask answered"
    );
});
