//! The API versions this broker serves: what ApiVersions advertises and what every request is
//! checked against before it is decoded.

use kafka_protocol::messages::ApiKey;

/// (API, lowest version, highest version). Only APIs whose handlers exist are listed.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[(ApiKey::ApiVersions, 0, 4), (ApiKey::Metadata, 0, 13)];

pub fn supported(api: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|&(key, min, max)| key == api && (min..=max).contains(&version))
}
