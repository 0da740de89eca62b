//! `GET /health`, as the README promises it to load balancers: 200 while the supervisor and the uplink run
//! and the spool accepts writes (`degraded` when a source failed: one bad PLC must not take the
//! host out of a load balancer), 503 otherwise.

use iot_connector_proto::SourceState;
use serde_json::{Value, json};

use crate::board::{Board, Entry, Phase, UPLINK};

/// The HTTP status and the JSON body.
pub fn health(board: &Board) -> (u16, Value) {
    let snapshot = board.snapshot();
    let uplink = board.uplink();
    let uplink_state = snapshot
        .get(UPLINK)
        .map_or(SourceState::Stopped, Entry::state);
    let accepting = uplink.as_ref().is_some_and(|u| u.accepting);
    let sources: Vec<Value> = snapshot
        .iter()
        .filter(|(name, _)| name.as_str() != UPLINK)
        .map(|(name, e)| {
            json!({
                "name": name,
                "protocol": e.protocol,
                "state": e.state().as_str(),
                "restarts": e.restarts,
                "records_read": e.records_read(),
                "last_error": e.last_error(),
            })
        })
        .collect();
    let failed = snapshot.iter().any(|(name, e)| {
        name != UPLINK && matches!(e.phase, Phase::Failed | Phase::WaitingForConfigChange)
    });
    let status = match (accepting, failed) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uplink": {
            "state": uplink_state.as_str(),
            "spool_bytes": uplink.as_ref().map_or(0, |u| u.spool_bytes),
            "oldest_unacked_seconds": uplink.as_ref().map_or(0.0, |u| u.oldest_unacked_seconds),
            "accepting": accepting,
            "last_error": snapshot.get(UPLINK).and_then(|e| e.last_error()),
        },
        "sources": sources,
    });
    (if accepting { 200 } else { 503 }, body)
}
