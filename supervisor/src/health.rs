//! `GET /health`, as the README promises it to load balancers: 200 while the supervisor and the
//! uplink run and the spool accepts writes, 503 otherwise. `degraded` (still 200) when a source
//! failed or has been without a connection for longer than `[http] degraded_after`, or while the
//! uplink reports something an operator must deal with (a damaged spool file it moved aside):
//! one bad PLC must not take the host out of a load balancer, and must not hide either.

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
            let not_connected = e.not_connected_for().map(|d| d.as_secs());
            let last_error = e.last_error().or_else(|| {
                not_connected.map(|s| format!("not connected for {s} s, no error reported yet"))
            });
            json!({
                "name": name,
                "protocol": e.protocol,
                "state": e.state().as_str(),
                "restarts": e.restarts,
                "records_read": e.records_read(),
                "last_error": last_error,
                "not_connected_seconds": not_connected,
            })
        })
        .collect();
    let troubled = snapshot.iter().any(|(name, e)| {
        name != UPLINK
            && (matches!(e.phase, Phase::Failed | Phase::WaitingForConfigChange)
                || e.not_connected_for()
                    .is_some_and(|d| d > board.degraded_after))
    });
    let attention = uplink.as_ref().and_then(|u| u.needs_attention.clone());
    let troubled = troubled || attention.is_some();
    let status = match (accepting, troubled) {
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
            "needs_attention": attention,
        },
        "sources": sources,
    });
    (if accepting { 200 } else { 503 }, body)
}
