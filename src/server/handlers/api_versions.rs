//! ApiVersions: which APIs and versions this broker serves.

use crate::server::versions::SUPPORTED;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

pub fn handle() -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(api, min, _, max)| {
            ApiVersion::default().with_api_key(api as i16).with_min_version(min).with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

/// The answer to an ApiVersions request of a version we do not serve: the error, and our
/// versions so the client can pick one (it is encoded as version 0).
pub fn unsupported_version() -> ApiVersionsResponse {
    handle().with_error_code(ResponseError::UnsupportedVersion.code())
}
