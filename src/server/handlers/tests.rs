//! The request decoder against hostile input: random bytes and valid requests with bytes
//! flipped, cut short or extended, for every API and version served. The property is that
//! every frame gets an answer (a request or a refusal) and nothing panics. A bounded fuzz run:
//! `PROPTEST_CASES` raises the count.

use super::{Refused, decode_request, versions};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;

/// A valid, default-valued request of `api` at `version`, as a frame without its size.
fn valid_frame(api: ApiKey, version: i16) -> Option<Vec<u8>> {
    let body = match api {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        _ => return None,
    };
    let mut frame = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    header.encode(&mut frame, api.request_header_version(version)).ok()?;
    body.encode(&mut frame, version).ok()?;
    Some(frame.to_vec())
}

fn served() -> Vec<(ApiKey, i16)> {
    versions::SUPPORTED
        .iter()
        .flat_map(|&(api, _, min, max)| (min..=max).map(move |version| (api, version)))
        .filter(|&(api, version)| valid_frame(api, version).is_some())
        .collect()
}

#[test]
fn every_served_version_decodes_its_own_valid_request() {
    for (api, version) in served() {
        let frame = valid_frame(api, version).expect("encodes");
        assert!(decode_request(Bytes::from(frame)).is_ok(), "{api:?} v{version}");
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate { keep: usize },
    Append { bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
    ]
}

fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, bits } if !frame.is_empty() => {
                let at = at % frame.len();
                frame[at] ^= bits;
            }
            Mutation::Truncate { keep } => frame.truncate(keep % (frame.len() + 1)),
            Mutation::Append { bytes } => frame.extend_from_slice(bytes),
            Mutation::Overwrite { at, bytes } if !frame.is_empty() => {
                let at = at % frame.len();
                for (i, byte) in bytes.iter().enumerate() {
                    if let Some(slot) = frame.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
            _ => {}
        }
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _answered = decode_request(Bytes::from(frame));
    }

    #[test]
    fn mutated_requests_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let served = served();
        let (api, version) = served[pick.index(served.len())];
        let frame = mutate(valid_frame(api, version).expect("encodes"), &mutations);
        match decode_request(Bytes::from(frame)) {
            Ok(request) => prop_assert!(versions::supported(request.api, request.version)),
            Err(Refused::UnsupportedApiVersions { .. } | Refused::Close(_)) => {}
        }
    }
}
