//! InitProducerId for idempotent producers: a fresh producer id at epoch 0. Any broker
//! answers it (no coordinator is involved without a transactional id); the id comes from
//! shard 0's allocator, so it is unique across cores and restarts.

use crate::shard::Shard;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use std::rc::Rc;

pub async fn init_producer_id(shard: &Rc<Shard>, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        // Transactions need a transaction coordinator, which this broker does not run yet.
        return refused(ResponseError::TransactionalIdAuthorizationFailed);
    }
    match shard.allocate_producer_id().await {
        Some(id) => InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0),
        None => refused(ResponseError::CoordinatorNotAvailable),
    }
}
