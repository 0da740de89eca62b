//! From one MQTT message to the records it becomes. Sans-IO: no sockets, no clocks (the caller
//! passes the receive time), so every rule here is unit- and property-tested.
//!
//! Every message becomes at least one record, whatever its bytes: a payload that does not parse
//! is kept raw with `parse_error` set and bad quality, never dropped and never a panic. Which
//! format applies is decided by the first configured topic filter that matches the topic.

mod json;
mod sparkplug;
mod time;

use iot_connector_config::{MqttTopic, PayloadFormat};
use iot_connector_proto::{Quality, Value};

pub use sparkplug::Sessions;

/// What one source's messages may hold at most: the memory the decoder spends on them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_message_bytes`: a larger payload is recorded without its bytes (with `parse_error`
    /// saying so); the MQTT client refuses packets much larger before reading them.
    pub max_payload_bytes: usize,
    /// `sparkplug_max_names`.
    pub sparkplug_max_names: usize,
}

impl Limits {
    /// The source's limits.
    pub fn of(source: &iot_connector_config::MqttSource) -> Self {
        Self {
            max_payload_bytes: usize::try_from(source.max_message_bytes.0).unwrap_or(usize::MAX),
            sparkplug_max_names: usize::try_from(source.sparkplug_max_names).unwrap_or(usize::MAX),
        }
    }
}

/// One received message.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The topic it was published on.
    pub topic: &'a str,
    /// Its payload, untrusted.
    pub payload: &'a [u8],
    /// When the worker received it (µs since the epoch, UTC): the event time when the payload
    /// carries none.
    pub received_us: i64,
}

/// The content of one record, without the columns the session adds (broker, qos, retain).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The topic column: the message's topic, or for Sparkplug B `<topic>/<metric name>`.
    pub topic: String,
    /// Device timestamp when the payload has one, else the receive time.
    pub event_time_us: i64,
    /// Quality of the value.
    pub quality: Quality,
    /// The value.
    pub value: Value,
    /// The raw payload (empty on all but the first record of a Sparkplug B message, so that a
    /// message of a thousand metrics is not stored a thousand times).
    pub payload: Vec<u8>,
    /// `json`, `text`, `binary` or `sparkplug_b`.
    pub format: &'static str,
    /// Why the payload (or part of it) could not be decoded.
    pub parse_error: Option<String>,
}

/// A possible loss of data the payloads revealed (a Sparkplug B sequence gap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Who skipped what.
    pub detail: String,
    /// Messages missing.
    pub count: u64,
}

/// What one message becomes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// At least one.
    pub items: Vec<Item>,
    /// Gaps to report as status rows before the items.
    pub gaps: Vec<Gap>,
}

/// How the messages of one subscription are decoded.
#[derive(Debug, Clone)]
struct Route {
    /// The filter without a `$share/<group>/` prefix.
    filter: String,
    format: PayloadFormat,
    value_path: Option<String>,
    timestamp_path: Option<String>,
}

/// Decodes the messages of one source; holds the Sparkplug B session state (aliases from births,
/// expected sequence numbers) between messages.
#[derive(Debug)]
pub struct Decoder {
    routes: Vec<Route>,
    max_payload_bytes: usize,
    sparkplug: Sessions,
}

/// The `payload_format` column text.
pub fn format_name(format: PayloadFormat) -> &'static str {
    match format {
        PayloadFormat::Json => "json",
        PayloadFormat::Text => "text",
        PayloadFormat::Binary => "binary",
        PayloadFormat::SparkplugB => "sparkplug_b",
    }
}

impl Decoder {
    /// A decoder for the configured subscriptions.
    pub fn new(topics: &[MqttTopic], limits: Limits) -> Self {
        let routes = topics
            .iter()
            .map(|t| Route {
                filter: without_share(&t.filter).to_owned(),
                format: t.payload,
                value_path: t.value_path.clone(),
                timestamp_path: t.timestamp_path.clone(),
            })
            .collect();
        Self {
            routes,
            max_payload_bytes: limits.max_payload_bytes,
            sparkplug: Sessions::new(limits.sparkplug_max_names),
        }
    }

    /// The records one message becomes (at least one) and the gaps it reveals.
    pub fn decode(&mut self, message: &Message<'_>) -> Decoded {
        let route = self
            .routes
            .iter()
            .find(|r| filter_matches(&r.filter, message.topic));
        // A topic no filter matches can only come from a broker that ignores our subscriptions
        // (or overlapping session state); keep its bytes rather than guess a format.
        let format = route.map_or(PayloadFormat::Binary, |r| r.format);
        if message.payload.len() > self.max_payload_bytes {
            return Decoded {
                items: vec![Item {
                    topic: message.topic.to_owned(),
                    event_time_us: message.received_us,
                    quality: Quality::Bad,
                    value: Value::Null,
                    payload: Vec::new(),
                    format: format_name(format),
                    parse_error: Some(format!(
                        "payload of {} bytes exceeds max_message_bytes ({}); its bytes are not stored",
                        message.payload.len(),
                        self.max_payload_bytes
                    )),
                }],
                gaps: Vec::new(),
            };
        }
        match format {
            PayloadFormat::Json => {
                let (value_path, timestamp_path) = route.map_or((None, None), |r| {
                    (r.value_path.as_deref(), r.timestamp_path.as_deref())
                });
                single(json::decode(message, value_path, timestamp_path))
            }
            PayloadFormat::Text => single(text(message)),
            PayloadFormat::Binary => single(Item {
                topic: message.topic.to_owned(),
                event_time_us: message.received_us,
                quality: Quality::Good,
                value: Value::Bytes(message.payload.to_vec()),
                payload: message.payload.to_vec(),
                format: "binary",
                parse_error: None,
            }),
            PayloadFormat::SparkplugB => self.sparkplug.decode(message),
        }
    }
}

fn single(item: Item) -> Decoded {
    Decoded {
        items: vec![item],
        gaps: Vec::new(),
    }
}

fn text(message: &Message<'_>) -> Item {
    let (quality, value, parse_error) = match std::str::from_utf8(message.payload) {
        Ok(text) => (Quality::Good, Value::Str(text.to_owned()), None),
        Err(e) => (
            Quality::Bad,
            Value::Null,
            Some(format!("not UTF-8 text: {e}")),
        ),
    };
    Item {
        topic: message.topic.to_owned(),
        event_time_us: message.received_us,
        quality,
        value,
        payload: message.payload.to_vec(),
        format: "text",
        parse_error,
    }
}

/// `$share/<group>/<filter>` → `<filter>`; any other filter unchanged.
pub fn without_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, filter)| filter),
        None => filter,
    }
}

/// Whether `topic` matches `filter` by the MQTT rules: `+` is one level, a trailing `#` is any
/// number of levels (including none), and topics starting with `$` are not matched by a filter
/// that starts with a wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a topic filter is not valid, or `None` when it is.
pub fn filter_problem(filter: &str) -> Option<String> {
    let (shared, bare) = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, bare)) if !group.is_empty() && !group.contains(['+', '#']) => (true, bare),
            _ => {
                return Some(format!(
                    "{filter:?}: a shared subscription is `$share/<group>/<filter>` with a group name without wildcards"
                ));
            }
        },
        None => (false, filter),
    };
    if bare.is_empty() {
        return Some(if shared {
            format!("{filter:?}: the filter after the share group is empty")
        } else {
            "a topic filter is empty".to_owned()
        });
    }
    if bare.contains('\0') {
        return Some(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = bare.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some(format!(
                "{filter:?}: `#` must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Some(format!("{filter:?}: `+` must be a whole level"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_payload_bytes: 1 << 20,
        sparkplug_max_names: 100_000,
    };

    fn topic(filter: &str, payload: PayloadFormat) -> MqttTopic {
        MqttTopic {
            filter: filter.into(),
            qos: 1,
            payload,
            value_path: None,
            timestamp_path: None,
        }
    }

    fn message<'a>(topic: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            topic,
            payload,
            received_us: 42,
        }
    }

    #[test]
    fn filters_match_by_the_mqtt_rules() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("#", "a/b"));
        assert!(!filter_matches("#", "$SYS/broker"));
        assert!(!filter_matches("+/broker", "$SYS/broker"));
        assert!(filter_matches("$SYS/#", "$SYS/broker"));
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
        assert!(filter_matches("+/+", "/x"));
        assert!(filter_matches(without_share("$share/g/plant/#"), "plant/1"));
    }

    #[test]
    fn invalid_filters_are_named() {
        assert!(filter_problem("plant/+/temp/#").is_none());
        assert!(filter_problem("$share/g/plant/#").is_none());
        assert!(filter_problem("").is_some());
        assert!(filter_problem("a/#/b").is_some());
        assert!(filter_problem("a/b#").is_some());
        assert!(filter_problem("a/b+/c").is_some());
        assert!(filter_problem("$share/g").is_some());
        assert!(filter_problem("$share//a").is_some());
        assert!(filter_problem("$share/g+/a").is_some());
    }

    #[test]
    fn the_first_matching_filter_decides_the_format() {
        let mut decoder = Decoder::new(
            &[
                topic("raw/#", PayloadFormat::Binary),
                topic("#", PayloadFormat::Text),
            ],
            LIMITS,
        );
        let raw = decoder.decode(&message("raw/x", b"\x01\x02"));
        assert_eq!(raw.items[0].value, Value::Bytes(vec![1, 2]));
        assert_eq!(raw.items[0].format, "binary");
        let text = decoder.decode(&message("other", b"hello"));
        assert_eq!(text.items[0].value, Value::Str("hello".into()));
        assert_eq!(text.items[0].payload, b"hello");
        assert_eq!(text.items[0].event_time_us, 42);
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_raw_and_flagged() {
        let mut decoder = Decoder::new(&[topic("#", PayloadFormat::Text)], LIMITS);
        let item = &decoder.decode(&message("t", b"ok\xff")).items[0];
        assert_eq!(item.quality, Quality::Bad);
        assert_eq!(item.value, Value::Null);
        assert_eq!(item.payload, b"ok\xff");
        assert!(item.parse_error.as_deref().unwrap().contains("UTF-8"));
    }

    #[test]
    fn an_oversized_payload_is_recorded_without_its_bytes() {
        let mut decoder = Decoder::new(&[topic("#", PayloadFormat::Binary)], LIMITS);
        let big = vec![0u8; LIMITS.max_payload_bytes + 1];
        let decoded = decoder.decode(&message("t", &big));
        assert_eq!(decoded.items.len(), 1);
        assert!(decoded.items[0].payload.is_empty());
        assert!(
            decoded.items[0]
                .parse_error
                .as_deref()
                .unwrap()
                .contains("exceeds")
        );
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn decoder(format: PayloadFormat) -> Decoder {
            Decoder::new(
                &[MqttTopic {
                    filter: "#".into(),
                    qos: 1,
                    payload: format,
                    value_path: Some("/a/0/b".into()),
                    timestamp_path: Some("/ts".into()),
                }],
                LIMITS,
            )
        }

        fn check(format: PayloadFormat, topic: &str, payload: &[u8]) {
            let decoded = decoder(format).decode(&Message {
                topic,
                payload,
                received_us: 1,
            });
            assert!(!decoded.items.is_empty(), "every message becomes a record");
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn json(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                check(PayloadFormat::Json, "plant/a", &payload);
            }

            #[test]
            fn json_shaped(payload in r#"\{("[a-z]{1,3}":([0-9eE.+-]{1,25}|"[^"]{0,8}"|\[[0-9,]{0,9}\]|null|true),?){0,4}\}"#) {
                check(PayloadFormat::Json, "plant/a", payload.as_bytes());
            }

            #[test]
            fn text(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                check(PayloadFormat::Text, "plant/a", &payload);
            }

            #[test]
            fn binary(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
                check(PayloadFormat::Binary, "plant/a", &payload);
            }

            #[test]
            fn sparkplug_b(
                payload in proptest::collection::vec(any::<u8>(), 0..512),
                kind in prop::sample::select(vec!["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "STATE", "NCMD", "x"]),
            ) {
                let topic = format!("spBv1.0/g/{kind}/n/d");
                check(PayloadFormat::SparkplugB, &topic, &payload);
            }
        }
    }
}
