//! The broker session: connect (MQTT 3.1.1 or 5, plain or TLS), subscribe, turn each message
//! into records, and acknowledge it to the broker only once those records are durable.
//!
//! Acknowledgements follow the uplink's durable acks, in arrival order, and never make the
//! task that polls the event loop wait on rumqttc's request queue (which only polling drains:
//! the deadlock rumqttc warns about). At most [`MAX_UNACKED`] QoS 1/2 messages are received and
//! not yet acknowledged:
//!
//! - MQTT 5: the broker is told so (receive maximum) and must not send more. A separate **ack
//!   task** waits for durability and queues each PUBACK/PUBREC through rumqttc. rumqttc's MQTT 5
//!   event loop offers no other way to write, so this bound is the broker's to keep; Debian's
//!   mosquitto 2.0.11 does not keep it once acks trickle in (measured: 30k unacknowledged
//!   during a backlog), and a crash then means more duplicates, still no loss.
//! - MQTT 3.1.1 has no flow control, and rumqttc drains one queued request per poll while it
//!   reads up to ten packets, so queued acks would fall behind without bound. The **poll task**
//!   writes the acks of durable messages itself between polls; when the window is full it stops
//!   polling until the uplink makes the oldest message durable (the broker holds the rest). The
//!   ack task only wakes an idle event loop, by queuing the one ack at the front.
//!
//! Either way the sink's own window (records not yet durable) also stops the poll task. QoS 2
//! completes with rumqttc's automatic PUBCOMP; rumqttc is told to accept a PUBREL for any packet
//! id, so PUBRELs a broker resends after a reconnect or a worker restart complete instead of
//! dropping every connection (rumqtt#664).
//!
//! Acks carry packet ids that only mean something on the connection they came from. Every
//! failure starts a new *generation*: acks of older generations are dropped, and before
//! reconnecting rumqttc's queued acks and unread packets for the dead connection are discarded.
//! The broker redelivers those messages (at-least-once: duplicates, never loss).
//!
//! Reconnects back off with jitter (0.5 s doubling to 30 s). Refused credentials and TLS
//! failures are configuration problems: an ERROR log, the last error in `status` and `/health`,
//! a `disconnected` status row saying what to fix, and retries every 15 s to 5 min, never a hot
//! loop. A CONNACK without our session where one should exist (a reconnect, or the restart of a
//! source that delivered before) means messages queued for us may be gone: the worker subscribes
//! again and writes a `gap` row.

mod client;
pub mod plan;

pub use plan::Plan;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iot_connector_proto::{Detail, MqttDetail, StatusEvent};
use iot_connector_runtime::{Backoff, LogGate, Sink, health, now_us};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::payload::{Decoder, Message};
use client::{AckToken, Client, Event, EventLoop, Failure, FailureKind, MAX_UNACKED, Received};

/// Payload bytes received but not yet durable, at most: the sink's window counts records, so
/// this keeps a flood of large messages from growing the worker instead of pausing it.
pub const MAX_UNDURABLE_BYTES: usize = 64 << 20;
const PERMIT_BYTES: usize = 1024;

fn network_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

fn configuration_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(30), Duration::from_secs(300))
}

/// A received message, until it is durable and (QoS 1/2) acknowledged.
#[derive(Debug)]
struct Pending {
    /// The sequence number of its last record.
    up_to: u64,
    /// The connection generation it arrived on.
    generation: u64,
    /// What acknowledges it (QoS 1/2).
    ack: Option<AckToken>,
    /// Its share of [`MAX_UNDURABLE_BYTES`], returned once durable.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The messages between receipt and acknowledgement, shared by the poll task and the ack task
/// (one thread; the lock is never held across an await).
#[derive(Debug, Default)]
struct Ledger {
    /// In arrival order.
    queue: VecDeque<Pending>,
    /// QoS 1/2 messages received and not yet acknowledged: those in `queue` plus `handed`.
    unacked: usize,
    /// Acks queued in rumqttc's request queue and not yet written (MQTT 3.1.1 wake-ups).
    handed: usize,
    /// The poll task is inside `poll()`.
    polling: bool,
}

impl Ledger {
    fn push(&mut self, pending: Pending) {
        if pending.ack.is_some() {
            self.unacked += 1;
        }
        self.queue.push_back(pending);
    }

    /// Whether the front message is durable.
    fn front_durable(&self, durable: Option<u64>) -> bool {
        self.queue
            .front()
            .is_some_and(|p| durable.is_some_and(|d| d >= p.up_to))
    }

    /// Takes the front message once durable; its ack, if it still has one to send.
    fn pop_durable(&mut self, durable: Option<u64>, generation: u64) -> Option<Option<AckToken>> {
        if !self.front_durable(durable) {
            return None;
        }
        let pending = self.queue.pop_front()?;
        if pending.ack.is_some() {
            self.unacked = self.unacked.saturating_sub(1);
        }
        Some(pending.ack.filter(|_| pending.generation == generation))
    }

    /// The connection failed: nothing pending can be acknowledged on the next one.
    fn reset(&mut self) {
        self.queue.clear();
        self.unacked = 0;
        self.handed = 0;
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the session for good: connects, reconnects, delivers.
pub async fn run(plan: Plan, decoder: Decoder, sink: Arc<Sink>) {
    let (client, events) = client::new(&plan);
    let generation = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    tokio::spawn(acknowledge(
        client.clone(),
        Arc::clone(&ledger),
        sink.acked(),
        Arc::clone(&generation),
        events.writes_acks(),
        plan.source.clone(),
    ));
    let ran_before = sink.next_seq() > 1;
    let durable = sink.acked();
    let mut session = Session {
        plan,
        decoder,
        sink,
        durable,
        client,
        events,
        generation,
        ledger,
        budget: Arc::new(Semaphore::new(MAX_UNDURABLE_BYTES / PERMIT_BYTES)),
        link: Link {
            connected: false,
            connections: 0,
            ran_before,
            reported: None,
            network: network_backoff(),
            configuration: configuration_backoff(),
        },
        parse_errors: LogGate::default(),
        gaps: LogGate::default(),
    };
    loop {
        session.acknowledge_durable().await;
        lock(&session.ledger).polling = true;
        let event = session.events.poll(&session.plan).await;
        lock(&session.ledger).polling = false;
        match event {
            Ok(Event::ConnAck { session_present }) => session.connected(session_present).await,
            Ok(Event::Publish(message)) => session.received(message).await,
            Ok(Event::SubAck(granted)) => session.subscribed(&granted),
            Ok(Event::AckWritten) => {
                let mut ledger = lock(&session.ledger);
                if ledger.handed > 0 {
                    ledger.handed -= 1;
                    ledger.unacked = ledger.unacked.saturating_sub(1);
                }
            }
            Ok(Event::Other) => {}
            Err(failure) => session.failed(failure).await,
        }
    }
}

/// The ack task. MQTT 5: queues the ack of every durable message, in order. MQTT 3.1.1: wakes
/// an idle event loop by queuing the ack at the front (the poll task writes the rest itself).
async fn acknowledge(
    client: Client,
    ledger: Arc<Mutex<Ledger>>,
    mut durable: watch::Receiver<Option<u64>>,
    generation: Arc<AtomicU64>,
    wake_only: bool,
    source: String,
) {
    while durable.changed().await.is_ok() {
        loop {
            let watermark = *durable.borrow_and_update();
            let current = generation.load(Ordering::Acquire);
            let token = {
                let mut ledger = lock(&ledger);
                if wake_only && (!ledger.polling || ledger.handed > 0) {
                    break;
                }
                match ledger.pop_durable(watermark, current) {
                    None => break,
                    Some(None) => continue,
                    Some(Some(token)) if wake_only => {
                        if client.try_ack(token).is_ok() {
                            ledger.handed += 1;
                            ledger.unacked += 1;
                        }
                        break;
                    }
                    Some(Some(token)) => token,
                }
            };
            if generation.load(Ordering::Acquire) != current {
                // The connection failed meanwhile; the broker redelivers the message.
                continue;
            }
            if let Err(e) = client.ack(token).await {
                tracing::error!(source = %source, error = %e, "The MQTT event loop is gone; acknowledgements stop.");
                return;
            }
        }
    }
}

/// The connection's state as the operator sees it.
#[derive(Debug)]
struct Link {
    connected: bool,
    /// Successful connections in this process.
    connections: u64,
    /// The uplink held records of this source before this process started.
    ran_before: bool,
    /// The failure kind already reported during the current outage.
    reported: Option<FailureKind>,
    network: Backoff,
    configuration: Backoff,
}

struct Session {
    plan: Plan,
    decoder: Decoder,
    sink: Arc<Sink>,
    durable: watch::Receiver<Option<u64>>,
    client: Client,
    events: EventLoop,
    generation: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    budget: Arc<Semaphore>,
    link: Link,
    parse_errors: LogGate,
    gaps: LogGate,
}

impl Session {
    /// MQTT 3.1.1, before each poll: writes the acks of durable messages, and while the window is
    /// full waits (without polling) for the uplink to make the oldest durable.
    async fn acknowledge_durable(&mut self) {
        if !self.events.writes_acks() {
            return;
        }
        loop {
            let watermark = *self.durable.borrow();
            let current = self.generation.load(Ordering::Acquire);
            let (tokens, full_at) = {
                let mut ledger = lock(&self.ledger);
                if ledger.handed > 0 {
                    // The wake-up ack goes first, to keep acks in arrival order.
                    return;
                }
                let mut tokens = Vec::new();
                while let Some(ack) = ledger.pop_durable(watermark, current) {
                    tokens.extend(ack);
                }
                let full = ledger.unacked >= usize::from(MAX_UNACKED);
                (
                    tokens,
                    full.then(|| ledger.queue.front().map(|p| p.up_to))
                        .flatten(),
                )
            };
            if !tokens.is_empty() {
                self.events.write_acks(&tokens).await;
            }
            let Some(up_to) = full_at else { return };
            // The window is full: the broker holds the rest until the uplink catches up.
            if self
                .durable
                .wait_for(|d| d.is_some_and(|d| d >= up_to))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn connected(&mut self, session_present: bool) {
        let first = self.link.connections == 0;
        self.link.connections += 1;
        self.link.connected = true;
        self.link.reported = None;
        // The credentials and the address are right; the link proves itself by staying up.
        self.link.network.connected();
        self.link.configuration.reset();
        health().set_connected(true);
        if !first {
            health().reconnected();
        }
        // Subscribe on the first connection of the process even when the broker kept the
        // session (the configured topics may have changed), and whenever the session is new.
        if (first || !session_present)
            && let Err(e) = self.client.try_subscribe(&self.plan.subscriptions)
        {
            tracing::error!(source = %self.plan.source, error = %e, "Cannot queue the subscriptions.");
            health().error(format!("cannot subscribe: {e}"));
        }
        tracing::info!(
            source = %self.plan.source,
            broker = %self.plan.broker,
            client_id = %self.plan.client_id,
            session_present,
            "Connected to the MQTT broker."
        );
        let session = if session_present {
            "session resumed"
        } else {
            "new session"
        };
        self.sink
            .status(
                StatusEvent::Connected,
                format!(
                    "connected to {} as client id {:?} ({session})",
                    self.plan.broker, self.plan.client_id
                ),
                0,
            )
            .await;
        let gap = if self.plan.clean_session {
            (!first).then(|| {
                "clean_session = true: messages published while the connection was down were not queued by the broker"
                    .to_owned()
            })
        } else if !session_present && (!first || self.link.ran_before) {
            Some(format!(
                "the broker had no session for client id {:?}: messages published while the connector was away may be lost (session expired, broker restarted without persistence, or the client id changed)",
                self.plan.client_id
            ))
        } else {
            None
        };
        if let Some(detail) = gap {
            tracing::warn!(source = %self.plan.source, "{detail}");
            self.sink.status(StatusEvent::Gap, detail, 0).await;
        }
    }

    fn subscribed(&self, granted: &[Result<u8, String>]) {
        for ((filter, wanted), result) in self.plan.subscriptions.iter().zip(granted) {
            match result {
                Err(why) => {
                    let message = format!(
                        "the broker {} refused the subscription to {filter:?}: {why}",
                        self.plan.broker
                    );
                    tracing::error!(source = %self.plan.source, "{message}");
                    health().error(message);
                }
                Ok(qos) if qos < wanted => tracing::warn!(
                    source = %self.plan.source,
                    filter = %filter,
                    wanted,
                    granted = qos,
                    "The broker granted a lower QoS than configured."
                ),
                Ok(_) => {}
            }
        }
    }

    async fn received(&mut self, message: Received) {
        let kib = message
            .payload
            .len()
            .div_ceil(PERMIT_BYTES)
            .clamp(1, MAX_UNDURABLE_BYTES / PERMIT_BYTES);
        let bytes = match u32::try_from(kib) {
            Ok(kib) => Arc::clone(&self.budget).acquire_many_owned(kib).await.ok(),
            Err(_) => None,
        };
        let decoded = self.decoder.decode(&Message {
            topic: &message.topic,
            payload: &message.payload,
            received_us: now_us(),
        });
        for gap in decoded.gaps {
            if let Some(suppressed) = self.gaps.open(tokio::time::Instant::now()) {
                tracing::warn!(source = %self.plan.source, suppressed, "{}", gap.detail);
            }
            self.sink
                .status(StatusEvent::Gap, gap.detail, gap.count)
                .await;
        }
        let mut last = 0;
        for item in decoded.items {
            if let Some(error) = &item.parse_error {
                health().parse_error();
                if let Some(suppressed) = self.parse_errors.open(tokio::time::Instant::now()) {
                    tracing::warn!(
                        source = %self.plan.source,
                        topic = %message.topic,
                        error = %error,
                        suppressed,
                        "A payload did not parse; it is kept raw with parse_error set."
                    );
                }
            }
            last = self
                .sink
                .push(
                    item.event_time_us,
                    item.quality,
                    item.value,
                    Detail::Mqtt(MqttDetail {
                        broker: self.plan.broker.clone(),
                        topic: item.topic,
                        qos: message.qos,
                        retain: message.retain,
                        payload: item.payload,
                        payload_format: item.format.to_owned(),
                        parse_error: item.parse_error,
                    }),
                )
                .await;
        }
        lock(&self.ledger).push(Pending {
            up_to: last,
            generation: self.generation.load(Ordering::Acquire),
            ack: message.ack,
            _bytes: bytes,
        });
    }

    async fn failed(&mut self, failure: Failure) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.ledger).reset();
        let was_connected = std::mem::replace(&mut self.link.connected, false);
        if was_connected {
            health().set_connected(false);
        }
        let configuration = failure.kind.is_configuration();
        let delay = if configuration {
            self.link.configuration.next_delay()
        } else {
            self.link.network.next_delay()
        };
        health().error(failure.message.clone());
        if failure.kind == FailureKind::Oversize {
            health().dropped("oversize", 1);
        }
        if was_connected || self.link.reported != Some(failure.kind) {
            self.link.reported = Some(failure.kind);
            let detail = format!(
                "{}{}; next attempt in {} s",
                if configuration {
                    "configuration problem: "
                } else {
                    ""
                },
                failure.message,
                delay.as_secs().max(1)
            );
            if configuration {
                tracing::error!(source = %self.plan.source, retry_s = delay.as_secs(), "{}", failure.message);
            } else {
                tracing::warn!(source = %self.plan.source, retry_ms = delay.as_millis(), "{}", failure.message);
            }
            self.sink.status(StatusEvent::Disconnected, detail, 0).await;
        } else {
            tracing::debug!(source = %self.plan.source, retry_ms = delay.as_millis(), "{}", failure.message);
        }
        tokio::time::sleep(delay).await;
        self.events.forget_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(up_to: u64, generation: u64, qos: Option<u8>) -> Pending {
        Pending {
            up_to,
            generation,
            ack: qos.map(|qos| AckToken::new(qos, u16::try_from(up_to).unwrap_or(1))),
            _bytes: None,
        }
    }

    #[test]
    fn the_ledger_releases_in_arrival_order_once_durable() {
        let mut ledger = Ledger::default();
        ledger.push(pending(3, 0, Some(1)));
        ledger.push(pending(4, 0, None));
        ledger.push(pending(7, 0, Some(2)));
        assert_eq!(ledger.unacked, 2, "QoS 0 needs no acknowledgement");
        assert_eq!(ledger.pop_durable(Some(2), 0), None, "not durable yet");
        assert_eq!(ledger.pop_durable(None, 0), None);
        assert_eq!(
            ledger.pop_durable(Some(4), 0),
            Some(Some(AckToken::new(1, 3)))
        );
        assert_eq!(ledger.pop_durable(Some(4), 0), Some(None));
        assert_eq!(
            ledger.pop_durable(Some(6), 0),
            None,
            "the next waits for seq 7"
        );
        assert_eq!(
            ledger.pop_durable(Some(9), 0),
            Some(Some(AckToken::new(2, 7)))
        );
        assert_eq!(ledger.unacked, 0);
        assert!(ledger.queue.is_empty());
    }

    #[test]
    fn acks_of_a_dead_connection_are_never_sent() {
        let mut ledger = Ledger::default();
        ledger.push(pending(1, 0, Some(1)));
        ledger.push(pending(2, 1, Some(1)));
        assert_eq!(
            ledger.pop_durable(Some(2), 1),
            Some(None),
            "generation 0 is gone"
        );
        assert_eq!(
            ledger.pop_durable(Some(2), 1),
            Some(Some(AckToken::new(1, 2)))
        );
        ledger.push(pending(3, 1, Some(1)));
        ledger.handed = 1;
        ledger.reset();
        assert_eq!(
            (ledger.unacked, ledger.handed, ledger.queue.len()),
            (0, 0, 0)
        );
    }
}
