//! MQTT 3.1.1 and 5 behind one small interface, so the session loop is written once. Only what
//! a subscriber needs: connect options, subscribe, manual acks, the events it reacts to, and the
//! classification of failures.

use std::time::Duration;

use iot_connector_config::MqttVersion;
use rumqttc::v5::mqttbytes::v5 as p5;

use super::plan::Plan;

/// How long a broker may stay silent before the connection counts as dead (2× keep-alive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Bound of one connection attempt (TCP, TLS and CONNACK).
const CONNECT_TIMEOUT_S: u64 = 10;
/// Requests (acks, subscribes) rumqttc queues for the event loop.
const REQUEST_CAPACITY: usize = 1024;
/// QoS 1/2 messages received and not yet acknowledged, at most: what a crash makes the broker
/// redeliver. MQTT 5 brokers are told so (receive maximum) and must not send more; for MQTT
/// 3.1.1, which has no flow control (and mosquitto 2.0.11 does not hold `max_inflight_messages`
/// once acks trickle in), the session stops polling when this many wait for acknowledgement.
pub const MAX_UNACKED: u16 = 4096;

/// The handle that queues requests to the event loop (cheap to clone).
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop: the socket, the protocol state, reconnects on the next poll after an error.
pub enum EventLoop {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4(_) => "Client::V4",
            Self::V5(_) => "Client::V5",
        })
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4(_) => "EventLoop::V4",
            Self::V5(_) => "EventLoop::V5",
        })
    }
}

/// What a received QoS 1/2 message needs to be acknowledged later: not the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    qos: u8,
    pkid: u16,
}

impl AckToken {
    #[cfg(test)]
    pub fn new(qos: u8, pkid: u16) -> Self {
        Self { qos, pkid }
    }
}

/// A received PUBLISH.
#[derive(Debug)]
pub struct Received {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Delivery QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// What acknowledges it (QoS 1/2 only).
    pub ack: Option<AckToken>,
}

/// The events the session reacts to.
#[derive(Debug)]
pub enum Event {
    /// Connected; whether the broker still had our session.
    ConnAck {
        /// The broker resumed the session (subscriptions and queued messages kept).
        session_present: bool,
    },
    /// A message.
    Publish(Received),
    /// The answer to our SUBSCRIBE: per filter (in order), the granted QoS or the refusal.
    SubAck(Vec<Result<u8, String>>),
    /// rumqttc wrote a PUBACK or PUBREC taken from its request queue.
    AckWritten,
    /// Anything else (pings, our own acks going out).
    Other,
}

/// Why the connection failed, in the terms an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The network or the broker is down or overloaded: retry soon.
    Network,
    /// The broker refused our credentials or client id: a configuration problem, retry slowly.
    Refused,
    /// TLS failed (certificate, CA, client certificate): a configuration problem, retry slowly.
    Tls,
    /// The broker sent something the MQTT client could not accept.
    Protocol,
    /// The broker sent a message above `max_message_bytes`: refused unread, and redelivered at
    /// every reconnect until the limit or the broker changes; retry slowly.
    Oversize,
}

impl FailureKind {
    /// Whether only a change of configuration (here or on the broker) can fix it.
    pub fn is_configuration(self) -> bool {
        matches!(self, Self::Refused | Self::Tls | Self::Oversize)
    }
}

/// A packet the client refused from its header: larger than the plan allows.
fn oversize(packet_bytes: usize, plan: &Plan) -> Failure {
    Failure {
        kind: FailureKind::Oversize,
        message: format!(
            "the broker {} sent a message of {packet_bytes} bytes, above max_message_bytes ({} bytes): it was refused unread, which ends the connection, and the broker sends it again at every reconnect; raise max_message_bytes, or remove the message from the broker",
            plan.broker, plan.max_message_bytes
        ),
    }
}

/// A failed poll, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// A sentence for the operator: what failed and what to check.
    pub message: String,
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn transport(plan: &Plan) -> rumqttc::Transport {
    match &plan.tls {
        Some(tls) => {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone()))
        }
        None => rumqttc::Transport::tcp(),
    }
}

/// The client and event loop for `plan` (no I/O yet: the first poll connects).
pub fn new(plan: &Plan) -> (Client, EventLoop) {
    match plan.version {
        MqttVersion::V311 => {
            let mut options = rumqttc::MqttOptions::new(&plan.client_id, &plan.host, plan.port);
            options
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_session(plan.clean_session)
                .set_manual_acks(true)
                .set_max_packet_size(plan.max_packet_bytes as usize, 1 << 20)
                .set_transport(transport(plan));
            if let Some((user, password)) = &plan.login {
                options.set_credentials(user, password);
            }
            let (client, mut events) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
            let mut network = events.network_options();
            network.set_connection_timeout(CONNECT_TIMEOUT_S);
            events.set_network_options(network);
            let mut events = EventLoop::V4(Box::new(events));
            events.expect_any_pubrel();
            (Client::V4(client), events)
        }
        MqttVersion::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(&plan.client_id, &plan.host, plan.port);
            options
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_start(plan.clean_session)
                .set_manual_acks(true)
                .set_max_packet_size(Some(plan.max_packet_bytes))
                .set_receive_maximum(Some(MAX_UNACKED))
                .set_connection_timeout(CONNECT_TIMEOUT_S)
                .set_transport(transport(plan));
            // Without an expiry an MQTT 5 session ends with the connection: nothing would be
            // queued for us while we are away.
            options.set_session_expiry_interval(
                (!plan.clean_session).then_some(plan.session_expiry_seconds),
            );
            if let Some((user, password)) = &plan.login {
                options.set_credentials(user, password);
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
            let mut events = EventLoop::V5(Box::new(events));
            events.expect_any_pubrel();
            (Client::V5(client), events)
        }
    }
}

fn publish4(token: AckToken) -> rumqttc::Publish {
    let mut publish = rumqttc::Publish::new("", qos4(token.qos), Vec::new());
    publish.pkid = token.pkid;
    publish
}

fn publish5(token: AckToken) -> p5::Publish {
    let mut publish = p5::Publish::new("", qos5(token.qos), Vec::new(), None);
    publish.pkid = token.pkid;
    publish
}

impl Client {
    /// Queues PUBACK (QoS 1) or PUBREC (QoS 2). Waits while the request queue is full, so it
    /// must never be awaited by the task that polls the event loop.
    pub async fn ack(&self, token: AckToken) -> Result<(), String> {
        match self {
            Self::V4(client) => client
                .ack(&publish4(token))
                .await
                .map_err(|e| e.to_string()),
            Self::V5(client) => client
                .ack(&publish5(token))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues PUBACK or PUBREC if the request queue has room, without waiting.
    pub fn try_ack(&self, token: AckToken) -> Result<(), String> {
        match self {
            Self::V4(client) => client.try_ack(&publish4(token)).map_err(|e| e.to_string()),
            Self::V5(client) => client.try_ack(&publish5(token)).map_err(|e| e.to_string()),
        }
    }

    /// Queues one SUBSCRIBE with every filter, without waiting (the caller polls the loop).
    pub fn try_subscribe(&self, subscriptions: &[(String, u8)]) -> Result<(), String> {
        match self {
            Self::V4(client) => {
                client
                    .try_subscribe_many(subscriptions.iter().map(|(filter, qos)| {
                        rumqttc::SubscribeFilter::new(filter.clone(), qos4(*qos))
                    }))
                    .map_err(|e| e.to_string())
            }
            Self::V5(client) => client
                .try_subscribe_many(
                    subscriptions
                        .iter()
                        .map(|(filter, qos)| p5::Filter::new(filter.clone(), qos5(*qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }
}

impl EventLoop {
    /// The next event; after an error the next call reconnects (immediately: the caller sleeps).
    pub async fn poll(&mut self, plan: &Plan) -> Result<Event, Failure> {
        match self {
            Self::V4(events) => match events.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => Ok(event4(packet)),
                Ok(rumqttc::Event::Outgoing(outgoing)) => Ok(outgoing_event(outgoing)),
                Err(e) => Err(classify4(&e, plan)),
            },
            Self::V5(events) => match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => Ok(event5(packet)),
                Ok(rumqttc::v5::Event::Outgoing(outgoing)) => Ok(outgoing_event(outgoing)),
                Err(e) => Err(classify5(&e, plan)),
            },
        }
    }

    /// Whether [`EventLoop::write_acks`] is available (MQTT 3.1.1).
    pub fn writes_acks(&self) -> bool {
        matches!(self, Self::V4(_))
    }

    /// MQTT 3.1.1: writes PUBACK/PUBREC straight to the connection, in order, between polls.
    ///
    /// rumqttc takes one request from its queue per poll but reads up to ten packets, so under
    /// a sustained burst queued acks fall behind without bound, and 3.1.1 has no flow control to
    /// stop the broker. Writing them here lets the session keep a hard window: when it is full
    /// the session stops polling (the broker holds the rest) and still acknowledges what becomes
    /// durable. rumqttc keeps no state for outgoing acks of incoming publishes (its own ack path
    /// only writes the packet), so nothing is bypassed. A write error surfaces on the next poll.
    pub async fn write_acks(&mut self, tokens: &[AckToken]) {
        let Self::V4(events) = self else { return };
        let Some(network) = events.network.as_mut() else {
            return;
        };
        for token in tokens {
            let packet = if token.qos == 2 {
                rumqttc::Packet::PubRec(rumqttc::PubRec::new(token.pkid))
            } else {
                rumqttc::Packet::PubAck(rumqttc::PubAck::new(token.pkid))
            };
            if network.write(packet).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(CONNECT_TIMEOUT_S), network.flush()).await;
    }

    /// Forgets what belongs to the connection that just failed, before the next one: acks
    /// queued for it (their packet ids mean nothing, or something else, on a new connection;
    /// the broker redelivers those messages instead) and packets read but not yet handed out.
    pub fn forget_connection(&mut self) {
        match self {
            Self::V4(events) => {
                events.clean();
                events.pending.retain(|r| {
                    !matches!(r, rumqttc::Request::PubAck(_) | rumqttc::Request::PubRec(_))
                });
                events.state.events.clear();
            }
            Self::V5(events) => {
                events.clean();
                events.pending.retain(|r| {
                    !matches!(
                        r,
                        rumqttc::v5::Request::PubAck(_) | rumqttc::v5::Request::PubRec(_)
                    )
                });
                events.state.events.clear();
            }
        }
        self.expect_any_pubrel();
    }

    /// Makes the next connection accept a PUBREL for any packet id (and answer PUBCOMP). After a
    /// reconnect, or in a new process, the broker resends the PUBREL of every QoS 2 message whose
    /// PUBREC went out earlier; rumqttc 0.25 only accepts a PUBREL for a PUBLISH it saw on this
    /// connection and otherwise drops the connection, again on every reconnect (rumqtt#664, fix
    /// proposed in rumqtt#1053; MQTT 5 says to answer PUBCOMP). Recording an incoming QoS 2
    /// publish for every id is the one public way to mark them all expected; the marks clear
    /// with each failure ([`EventLoop::forget_connection`] sets them again).
    fn expect_any_pubrel(&mut self) {
        match self {
            Self::V4(events) => {
                for pkid in 1..=u16::MAX {
                    let mut publish =
                        rumqttc::Publish::new("", rumqttc::QoS::ExactlyOnce, Vec::new());
                    publish.pkid = pkid;
                    let _ = events
                        .state
                        .handle_incoming_packet(rumqttc::Packet::Publish(publish));
                }
                events.state.events.clear();
            }
            Self::V5(events) => {
                for pkid in 1..=u16::MAX {
                    let mut publish = p5::Publish::new(
                        "",
                        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                        Vec::new(),
                        None,
                    );
                    publish.pkid = pkid;
                    let _ = events
                        .state
                        .handle_incoming_packet(p5::Packet::Publish(publish));
                }
                events.state.events.clear();
            }
        }
    }
}

fn outgoing_event(outgoing: rumqttc::Outgoing) -> Event {
    match outgoing {
        rumqttc::Outgoing::PubAck(_) | rumqttc::Outgoing::PubRec(_) => Event::AckWritten,
        _ => Event::Other,
    }
}

fn level4(qos: rumqttc::QoS) -> u8 {
    match qos {
        rumqttc::QoS::AtMostOnce => 0,
        rumqttc::QoS::AtLeastOnce => 1,
        rumqttc::QoS::ExactlyOnce => 2,
    }
}

fn level5(qos: rumqttc::v5::mqttbytes::QoS) -> u8 {
    use rumqttc::v5::mqttbytes::QoS;
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn event4(packet: rumqttc::Packet) -> Event {
    use rumqttc::{Packet, SubscribeReasonCode};
    match packet {
        Packet::ConnAck(ack) => Event::ConnAck {
            session_present: ack.session_present,
        },
        Packet::Publish(publish) => {
            let qos = level4(publish.qos);
            Event::Publish(Received {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
                qos,
                retain: publish.retain,
                ack: (qos > 0).then_some(AckToken {
                    qos,
                    pkid: publish.pkid,
                }),
            })
        }
        Packet::SubAck(ack) => Event::SubAck(
            ack.return_codes
                .into_iter()
                .map(|code| match code {
                    SubscribeReasonCode::Success(qos) => Ok(level4(qos)),
                    SubscribeReasonCode::Failure => Err("refused (0x80)".to_owned()),
                })
                .collect(),
        ),
        _ => Event::Other,
    }
}

fn event5(packet: p5::Packet) -> Event {
    match packet {
        p5::Packet::ConnAck(ack) => Event::ConnAck {
            session_present: ack.session_present,
        },
        p5::Packet::Publish(publish) => {
            let qos = level5(publish.qos);
            Event::Publish(Received {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload.to_vec(),
                qos,
                retain: publish.retain,
                ack: (qos > 0).then_some(AckToken {
                    qos,
                    pkid: publish.pkid,
                }),
            })
        }
        p5::Packet::SubAck(ack) => Event::SubAck(
            ack.return_codes
                .into_iter()
                .map(|code| match code {
                    p5::SubscribeReasonCode::Success(qos) => Ok(level5(qos)),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        ),
        _ => Event::Other,
    }
}

/// The TLS cause of an error, wherever it sits in the chain (rumqttc wraps rustls errors in
/// I/O errors, whose `source()` skips the wrapped error itself).
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| rustls_cause(inner))
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

fn tls_failure(tls: &rustls::Error, plan: &Plan) -> Failure {
    use rustls::{AlertDescription as A, Error as E};
    let message = match tls {
        E::AlertReceived(A::CertificateRequired) | E::AlertReceived(A::HandshakeFailure)
            if !plan.client_certificate =>
        {
            format!(
                "TLS with {} failed: the broker requires a client certificate ({tls}); set cert_file and key_file",
                plan.broker
            )
        }
        E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::DecryptError
            | A::CertificateRequired,
        ) => format!(
            "TLS with {} failed: the broker rejected our client certificate ({tls}); check cert_file, key_file and the CA the broker trusts",
            plan.broker
        ),
        E::InvalidCertificate(_) => format!(
            "TLS with {} failed: the broker's certificate is not trusted ({tls}); check ca_file and that the certificate names host {:?}",
            plan.broker, plan.host
        ),
        other => format!("TLS with {} failed: {other}", plan.broker),
    };
    Failure {
        kind: FailureKind::Tls,
        message,
    }
}

fn refused(code: &str, plan: &Plan) -> Failure {
    let who = match &plan.login {
        Some((user, _)) => format!("the credentials of user {user:?}"),
        None => "an anonymous connection (no username is configured)".to_owned(),
    };
    Failure {
        kind: FailureKind::Refused,
        message: format!(
            "the broker {} refused {who} ({code}): check username and password and the broker's access rules",
            plan.broker
        ),
    }
}

fn network(error: &dyn std::fmt::Display, plan: &Plan) -> Failure {
    Failure {
        kind: FailureKind::Network,
        message: format!("connection to {} failed: {error}", plan.broker),
    }
}

fn classify4(error: &rumqttc::ConnectionError, plan: &Plan) -> Failure {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E, StateError as S};
    if let Some(tls) = rustls_cause(error) {
        return tls_failure(tls, plan);
    }
    match error {
        E::ConnectionRefused(code @ (C::BadUserNamePassword | C::NotAuthorized)) => {
            refused(&format!("{code:?}"), plan)
        }
        E::ConnectionRefused(C::BadClientId) => Failure {
            kind: FailureKind::Refused,
            message: format!(
                "the broker {} refused client id {:?} (BadClientId): set another client_id",
                plan.broker, plan.client_id
            ),
        },
        E::ConnectionRefused(C::RefusedProtocolVersion) => Failure {
            kind: FailureKind::Refused,
            message: format!(
                "the broker {} does not speak MQTT 3.1.1: set mqtt_version = \"5\"",
                plan.broker
            ),
        },
        E::Tls(e) => Failure {
            kind: FailureKind::Tls,
            message: format!("TLS with {} failed: {e}", plan.broker),
        },
        E::MqttState(S::Unsolicited(pkid)) => Failure {
            kind: FailureKind::Protocol,
            message: format!(
                "the broker sent an unexpected acknowledgement for packet id {pkid}; reconnecting"
            ),
        },
        E::MqttState(S::Deserialization(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(
            size,
        ))) => oversize(*size, plan),
        E::MqttState(S::Deserialization(e)) => Failure {
            kind: FailureKind::Protocol,
            message: format!(
                "the broker {} sent a packet MQTT 3.1.1 does not allow: {e}",
                plan.broker
            ),
        },
        other => network(other, plan),
    }
}

fn classify5(error: &rumqttc::v5::ConnectionError, plan: &Plan) -> Failure {
    use p5::ConnectReturnCode as C;
    use rumqttc::v5::{ConnectionError as E, StateError as S};
    if let Some(tls) = rustls_cause(error) {
        return tls_failure(tls, plan);
    }
    // MQTT 5 state errors do not chain their source: look into the I/O error by hand.
    if let E::MqttState(S::Deserialization(rumqttc::v5::mqttbytes::Error::Io(io))) = error
        && let Some(tls) = rustls_cause(io)
    {
        return tls_failure(tls, plan);
    }
    match error {
        E::ConnectionRefused(
            code @ (C::BadUserNamePassword
            | C::NotAuthorized
            | C::Banned
            | C::BadAuthenticationMethod),
        ) => refused(&format!("{code:?}"), plan),
        E::ConnectionRefused(code @ (C::ClientIdentifierNotValid | C::BadClientId)) => Failure {
            kind: FailureKind::Refused,
            message: format!(
                "the broker {} refused client id {:?} ({code:?}): set another client_id",
                plan.broker, plan.client_id
            ),
        },
        E::ConnectionRefused(
            code @ (C::UnsupportedProtocolVersion | C::RefusedProtocolVersion),
        ) => Failure {
            kind: FailureKind::Refused,
            message: format!(
                "the broker {} does not speak MQTT 5 ({code:?}): set mqtt_version = \"3.1.1\"",
                plan.broker
            ),
        },
        E::ConnectionRefused(code) => network(
            &format!("the broker refused the connection ({code:?})"),
            plan,
        ),
        E::Tls(e) => Failure {
            kind: FailureKind::Tls,
            message: format!("TLS with {} failed: {e}", plan.broker),
        },
        E::MqttState(S::Unsolicited(pkid)) => Failure {
            kind: FailureKind::Protocol,
            message: format!(
                "the broker sent an unexpected acknowledgement for packet id {pkid}; reconnecting"
            ),
        },
        E::MqttState(S::Deserialization(
            rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
        )) => oversize(*pkt_size, plan),
        other => network(other, plan),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn plan(extra: &str) -> Plan {
        let source = toml::from_str(&format!(
            "name = \"s\"\nendpoint = \"mqtt://10.0.0.9:1883\"\n{extra}\ntopics = [{{ filter = \"a/#\" }}]\n"
        ))
        .unwrap();
        Plan::new(&source, "c", "s").unwrap()
    }

    fn tls_io(error: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn refused_credentials_are_a_configuration_problem_naming_the_user() {
        let plan = plan("username = \"edge\"\npassword = \"wrong\"");
        let failure = classify4(
            &rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized),
            &plan,
        );
        assert_eq!(failure.kind, FailureKind::Refused);
        assert!(failure.kind.is_configuration());
        assert!(
            failure
                .message
                .contains("refused the credentials of user \"edge\"")
        );
        assert!(failure.message.contains("mqtt://10.0.0.9:1883"));
        assert!(!failure.message.contains("wrong"), "never the password");

        let failure = classify5(
            &rumqttc::v5::ConnectionError::ConnectionRefused(
                p5::ConnectReturnCode::BadUserNamePassword,
            ),
            &plan,
        );
        assert_eq!(failure.kind, FailureKind::Refused);

        let anonymous = classify4(
            &rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized),
            &self::plan(""),
        );
        assert!(anonymous.message.contains("no username is configured"));
    }

    #[test]
    fn tls_failures_say_which_side_to_fix() {
        let plan = plan("");
        let untrusted = classify4(
            &rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(tls_io(
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ))),
            &plan,
        );
        assert_eq!(untrusted.kind, FailureKind::Tls);
        assert!(untrusted.message.contains("not trusted") && untrusted.message.contains("ca_file"));

        // TLS 1.3 reports a missing client certificate on the first read, as a decoding error.
        let alert = || {
            tls_io(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            ))
        };
        let missing = classify4(
            &rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::Io(alert()),
            )),
            &plan,
        );
        assert_eq!(missing.kind, FailureKind::Tls);
        assert!(
            missing.message.contains("requires a client certificate"),
            "{}",
            missing.message
        );
        let missing = classify5(
            &rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::Io(alert()),
            )),
            &plan,
        );
        assert_eq!(missing.kind, FailureKind::Tls);
    }

    #[test]
    fn network_failures_are_retried_soon() {
        let plan = plan("");
        let failure = classify4(
            &rumqttc::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            &plan,
        );
        assert_eq!(failure.kind, FailureKind::Network);
        assert!(!failure.kind.is_configuration());
        let failure = classify5(
            &rumqttc::v5::ConnectionError::ConnectionRefused(p5::ConnectReturnCode::ServerBusy),
            &plan,
        );
        assert_eq!(failure.kind, FailureKind::Network);
    }
}
