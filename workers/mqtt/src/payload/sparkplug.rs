//! `payload = "sparkplug_b"`: Sparkplug B (Eclipse Tahu protobuf) payloads, one record per
//! metric, decoded the way a Sparkplug host application reads them.
//!
//! Topics are `spBv1.0/<group>/<NBIRTH|NDEATH|DBIRTH|DDEATH|NDATA|DDATA|NCMD|DCMD>/<node>[/<device>]`
//! (and `spBv1.0/STATE/<host>`, whose payload is JSON or text). Per edge node the decoder keeps:
//!
//! - the aliases its births declared: NBIRTH starts a new session (forgets the node's aliases),
//!   DBIRTH adds a device's. DATA metrics that carry only an alias get their name and datatype
//!   back from there. An alias no birth declared (typically: the worker started after the
//!   births) yields a record without a name, the raw payload and a `parse_error`.
//! - the payload sequence number (0–255, +1 per message from the node). A jump forward is a gap
//!   (status row with the number of messages missing); a step back of up to 128 is taken as a
//!   broker redelivery, not a gap. NDEATH ends the node's sequence.
//!
//! The topic column of a metric's record is `<topic>/<metric name>` (the Sparkplug topic has a
//! fixed number of levels, so the name is what follows the 4th level for N-messages and the 5th
//! for D-messages). Event time is the metric's timestamp, else the payload's, else the receive
//! time. The raw payload is stored with the message's first record only.
//!
//! Everything here is untrusted input: memory is bounded by [`MAX_NODES`] and by the source's
//! `sparkplug_max_names` (names and aliases remembered across all nodes; a birth beyond it is
//! remembered in part and says so in its record's `parse_error`), and every number is
//! converted without a panic.

use std::collections::HashMap;

use iot_connector_proto::{Quality, Value};
use prost::Message as _;

use super::{Decoded, Gap, Item, Message};

#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
mod tahu {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
}

use tahu::{
    DataType, Payload,
    payload::{
        DataSet, Metric, PropertySet, Template, data_set::data_set_value,
        metric::Value as MetricValue, property_value, template::parameter,
    },
};

/// Edge nodes whose state is kept; messages of further nodes decode without alias resolution
/// or gap detection.
pub const MAX_NODES: usize = 10_000;

const FORMAT: &str = "sparkplug_b";

/// The Sparkplug B message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
}

impl Kind {
    fn parse(level: &str) -> Option<Self> {
        Some(match level {
            "NBIRTH" => Self::NBirth,
            "NDEATH" => Self::NDeath,
            "DBIRTH" => Self::DBirth,
            "DDEATH" => Self::DDeath,
            "NDATA" => Self::NData,
            "DDATA" => Self::DData,
            "NCMD" => Self::NCmd,
            "DCMD" => Self::DCmd,
            _ => return None,
        })
    }

    fn is_device(self) -> bool {
        matches!(self, Self::DBirth | Self::DDeath | Self::DData | Self::DCmd)
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic<'a> {
    /// `spBv1.0/STATE/<host>`: a host application's state, JSON or text.
    State,
    /// A message of an edge node or one of its devices.
    Node {
        group: &'a str,
        kind: Kind,
        node: &'a str,
        device: Option<&'a str>,
    },
}

fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    let mut levels = topic.split('/');
    if levels.next()? != "spBv1.0" {
        return None;
    }
    let group = levels.next()?;
    if group == "STATE" {
        return Some(Topic::State);
    }
    let kind = Kind::parse(levels.next()?)?;
    let node = levels.next()?;
    let device = levels.next();
    if levels.next().is_some() || device.is_some() != kind.is_device() {
        return None;
    }
    Some(Topic::Node {
        group,
        kind,
        node,
        device,
    })
}

/// What a birth declared about one metric.
#[derive(Debug, Clone)]
struct Declared {
    name: String,
    datatype: Option<u32>,
}

/// One edge node's session as seen from here.
#[derive(Debug, Default)]
struct Node {
    /// The sequence number the node's next message should carry.
    next_seq: Option<u8>,
    /// Alias → metric, from NBIRTH and DBIRTHs (unique across a node and its devices).
    aliases: HashMap<u64, Declared>,
    /// (device, name) → datatype, for DATA metrics sent by name without a datatype.
    datatypes: HashMap<(Option<String>, String), u32>,
}

/// The Sparkplug B state of every edge node seen, keyed by (group, node).
#[derive(Debug)]
pub struct Sessions {
    nodes: HashMap<(String, String), Node>,
    names: Names,
}

/// How many aliases and (device, name) datatypes all nodes' births left remembered, and how
/// many they may.
#[derive(Debug)]
struct Names {
    kept: usize,
    max: usize,
}

impl Sessions {
    /// No node seen yet; births remember at most `max_names` names and aliases in all.
    pub fn new(max_names: usize) -> Self {
        Self {
            nodes: HashMap::new(),
            names: Names {
                kept: 0,
                max: max_names,
            },
        }
    }

    /// Decodes one message: one item per metric (at least one), and any sequence gap.
    pub fn decode(&mut self, message: &Message<'_>) -> Decoded {
        let topic = parse_topic(message.topic);
        if topic == Some(Topic::State) {
            return single(state_item(message));
        }
        let payload = match Payload::decode(message.payload) {
            Ok(payload) => payload,
            Err(e) => {
                return single(bad(message, format!("not a Sparkplug B payload: {e}")));
            }
        };
        let mut gaps = Vec::new();
        let mut notes = Vec::new();
        let (node, device) = match topic {
            Some(Topic::Node {
                group,
                kind,
                node,
                device,
            }) => {
                let mut state = node_state(&mut self.nodes, group, node);
                if let Some(state) = state.as_deref_mut() {
                    let mut learned = Learned {
                        names: &mut self.names,
                        gaps: &mut gaps,
                        notes: &mut notes,
                    };
                    track(state, kind, &payload, group, node, device, &mut learned);
                }
                (state, device)
            }
            _ => (None, None),
        };
        let device = device.map(str::to_owned);
        let base_time = payload.timestamp.and_then(ms_to_us);
        let mut items: Vec<Item> = payload
            .metrics
            .iter()
            .map(|metric| metric_item(message, node.as_deref(), &device, metric, base_time))
            .collect();
        if items.is_empty() {
            // A death without metrics, or an empty payload: still a record of the message.
            items.push(Item {
                topic: message.topic.to_owned(),
                event_time_us: base_time.unwrap_or(message.received_us),
                quality: Quality::Good,
                value: Value::Null,
                payload: Vec::new(),
                format: FORMAT,
                parse_error: None,
            });
        }
        if let Some(first) = items.first_mut() {
            first.payload = message.payload.to_vec();
            if !notes.is_empty() {
                let note = notes.join("; ");
                first.parse_error = Some(match first.parse_error.take() {
                    Some(e) => format!("{e}; {note}"),
                    None => note,
                });
            }
        }
        for item in &mut items {
            if item.parse_error.is_some() && item.payload.is_empty() {
                item.payload = message.payload.to_vec();
            }
        }
        Decoded { items, gaps }
    }
}

impl Names {
    /// Sets `key` to `value` in `map`: a known key is updated, a new one takes a place while
    /// there is one. Returns whether the value is remembered.
    fn remember<K: std::hash::Hash + Eq, V>(
        &mut self,
        map: &mut HashMap<K, V>,
        key: K,
        value: V,
    ) -> bool {
        if let Some(known) = map.get_mut(&key) {
            *known = value;
        } else if self.kept < self.max {
            map.insert(key, value);
            self.kept += 1;
        } else {
            return false;
        }
        true
    }
}

/// The node's state, created on first sight while there is room.
fn node_state<'a>(
    nodes: &'a mut HashMap<(String, String), Node>,
    group: &str,
    node: &str,
) -> Option<&'a mut Node> {
    let key = (group.to_owned(), node.to_owned());
    if !nodes.contains_key(&key) && nodes.len() >= MAX_NODES {
        return None;
    }
    Some(nodes.entry(key).or_default())
}

/// What one message teaches beyond its records: names, gaps, notes for its `parse_error`.
struct Learned<'a> {
    names: &'a mut Names,
    gaps: &'a mut Vec<Gap>,
    notes: &'a mut Vec<String>,
}

/// Sequence tracking and birth learning for one message of a node.
fn track(
    state: &mut Node,
    kind: Kind,
    payload: &Payload,
    group: &str,
    node: &str,
    device: Option<&str>,
    learned: &mut Learned<'_>,
) {
    let seq = match payload.seq.map(u8::try_from) {
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => {
            learned.notes.push(format!(
                "payload seq {} is outside 0..=255",
                payload.seq.unwrap_or_default()
            ));
            None
        }
        None => None,
    };
    match kind {
        Kind::NBirth => {
            learned.names.kept = learned
                .names
                .kept
                .saturating_sub(state.aliases.len() + state.datatypes.len());
            state.aliases.clear();
            state.datatypes.clear();
            state.next_seq = seq.map(|s| s.wrapping_add(1));
        }
        Kind::NDeath => state.next_seq = None,
        Kind::NData | Kind::DBirth | Kind::DData | Kind::DDeath => {
            if let Some(gap) = seq.and_then(|seq| check_seq(state, seq, group, node)) {
                learned.gaps.push(gap);
            }
        }
        Kind::NCmd | Kind::DCmd => {}
    }
    if matches!(kind, Kind::NBirth | Kind::DBirth) {
        learn(state, payload, device, learned);
    }
}

fn check_seq(state: &mut Node, seq: u8, group: &str, node: &str) -> Option<Gap> {
    let Some(expected) = state.next_seq else {
        state.next_seq = Some(seq.wrapping_add(1));
        return None;
    };
    if seq == expected {
        state.next_seq = Some(seq.wrapping_add(1));
        return None;
    }
    let missing = seq.wrapping_sub(expected);
    if missing >= 128 {
        // Behind what we expected: a redelivered message (the broker resends after a
        // reconnect), not a loss. Keep expecting the same number.
        return None;
    }
    state.next_seq = Some(seq.wrapping_add(1));
    Some(Gap {
        detail: format!(
            "Sparkplug B sequence gap from edge node {group}/{node}: expected seq {expected}, got {seq} ({missing} messages missing)"
        ),
        count: u64::from(missing),
    })
}

fn learn(state: &mut Node, payload: &Payload, device: Option<&str>, learned: &mut Learned<'_>) {
    let names = &mut *learned.names;
    let mut forgotten = 0_usize;
    for metric in &payload.metrics {
        let Some(name) = metric.name.as_ref().filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Some(alias) = metric.alias {
            let declared = Declared {
                name: name.clone(),
                datatype: metric.datatype,
            };
            if !names.remember(&mut state.aliases, alias, declared) {
                forgotten += 1;
            }
        }
        if let Some(datatype) = metric.datatype {
            let key = (device.map(str::to_owned), name.clone());
            if !names.remember(&mut state.datatypes, key, datatype) {
                forgotten += 1;
            }
        }
    }
    if forgotten > 0 {
        learned.notes.push(format!(
            "{forgotten} names and aliases of this birth are not remembered: the source's sparkplug_max_names ({}) is reached across all edge nodes; raise it, or their DATA messages decode without names",
            names.max
        ));
    }
}

fn single(item: Item) -> Decoded {
    Decoded {
        items: vec![item],
        gaps: Vec::new(),
    }
}

fn bad(message: &Message<'_>, error: String) -> Item {
    Item {
        topic: message.topic.to_owned(),
        event_time_us: message.received_us,
        quality: Quality::Bad,
        value: Value::Null,
        payload: message.payload.to_vec(),
        format: FORMAT,
        parse_error: Some(error),
    }
}

/// `spBv1.0/STATE/<host>`: JSON in Sparkplug 3.0, `ONLINE`/`OFFLINE` text before.
fn state_item(message: &Message<'_>) -> Item {
    let value = match serde_json::from_slice::<serde_json::Value>(message.payload) {
        Ok(json) => super::json::to_value(&json),
        Err(_) => match std::str::from_utf8(message.payload) {
            Ok(text) => Value::Str(text.to_owned()),
            Err(e) => {
                return bad(
                    message,
                    format!("STATE payload is neither JSON nor text: {e}"),
                );
            }
        },
    };
    Item {
        topic: message.topic.to_owned(),
        event_time_us: message.received_us,
        quality: Quality::Good,
        value,
        payload: message.payload.to_vec(),
        format: FORMAT,
        parse_error: None,
    }
}

fn ms_to_us(ms: u64) -> Option<i64> {
    i64::try_from(ms).ok()?.checked_mul(1000)
}

fn metric_item(
    message: &Message<'_>,
    node: Option<&Node>,
    device: &Option<String>,
    metric: &Metric,
    base_time: Option<i64>,
) -> Item {
    let declared = metric
        .alias
        .and_then(|alias| node.and_then(|n| n.aliases.get(&alias)));
    let name = metric
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| declared.map(|d| d.name.clone()));
    let datatype = metric
        .datatype
        .or_else(|| declared.and_then(|d| d.datatype))
        .or_else(|| {
            let name = name.clone()?;
            let node = node?;
            node.datatypes.get(&(device.clone(), name)).copied()
        });
    let mut problems = Vec::new();
    if name.is_none() {
        problems.push(match metric.alias {
            Some(alias) => {
                format!("metric alias {alias} is in no NBIRTH/DBIRTH seen since the worker started")
            }
            None => "metric has neither a name nor an alias".to_owned(),
        });
    }
    let value = if metric.is_null == Some(true) {
        Value::Null
    } else {
        match metric_value(metric.value.as_ref(), datatype) {
            Ok(value) => value,
            Err(e) => {
                problems.push(e);
                Value::Null
            }
        }
    };
    let event_time_us = match metric.timestamp.map(ms_to_us) {
        Some(Some(us)) => us,
        Some(None) => {
            problems.push("metric timestamp out of range".to_owned());
            base_time.unwrap_or(message.received_us)
        }
        None => base_time.unwrap_or(message.received_us),
    };
    let mut quality = quality_of(metric.properties.as_ref());
    if !problems.is_empty() {
        quality = if value == Value::Null {
            Quality::Bad
        } else {
            Quality::Uncertain
        };
    }
    Item {
        topic: match &name {
            Some(name) => format!("{}/{name}", message.topic),
            None => message.topic.to_owned(),
        },
        event_time_us,
        quality,
        value,
        payload: Vec::new(),
        format: FORMAT,
        parse_error: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

/// The `Quality` property of a metric (Ignition's convention: 192 good, 0 bad, 500 stale).
fn quality_of(properties: Option<&PropertySet>) -> Quality {
    let Some(properties) = properties else {
        return Quality::Good;
    };
    let code = properties
        .keys
        .iter()
        .position(|k| k == "Quality")
        .and_then(|i| properties.values.get(i))
        .and_then(|v| match v.value {
            Some(property_value::Value::IntValue(q)) => Some(u64::from(q)),
            Some(property_value::Value::LongValue(q)) => Some(q),
            _ => None,
        });
    match code {
        None | Some(192) => Quality::Good,
        Some(0) => Quality::Bad,
        Some(_) => Quality::Uncertain,
    }
}

fn datatype(code: Option<u32>) -> Option<DataType> {
    code.and_then(|c| i32::try_from(c).ok())
        .and_then(|c| DataType::try_from(c).ok())
}

fn low_i8(x: u32) -> i8 {
    let [b, ..] = x.to_le_bytes();
    i8::from_le_bytes([b])
}

fn low_i16(x: u32) -> i16 {
    let [a, b, ..] = x.to_le_bytes();
    i16::from_le_bytes([a, b])
}

fn as_i32(x: u32) -> i32 {
    i32::from_le_bytes(x.to_le_bytes())
}

fn as_i64(x: u64) -> i64 {
    i64::from_le_bytes(x.to_le_bytes())
}

/// A metric's value by its datatype (from the metric or its birth). Signed integers travel as
/// unsigned two's complement; arrays are packed little-endian in `bytes_value`.
fn metric_value(value: Option<&MetricValue>, code: Option<u32>) -> Result<Value, String> {
    let Some(value) = value else {
        return Ok(Value::Null);
    };
    let dt = datatype(code);
    Ok(match (dt, value) {
        (Some(DataType::Int8), MetricValue::IntValue(x)) => Value::Int(i64::from(low_i8(*x))),
        (Some(DataType::Int16), MetricValue::IntValue(x)) => Value::Int(i64::from(low_i16(*x))),
        (Some(DataType::Int32), MetricValue::IntValue(x)) => Value::Int(i64::from(as_i32(*x))),
        (
            Some(DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64),
            MetricValue::LongValue(x),
        ) => Value::Int(as_i64(*x)),
        // DateTime: ms since the epoch.
        (Some(DataType::DateTime), MetricValue::LongValue(x)) => Value::Int(as_i64(*x)),
        (_, MetricValue::IntValue(x)) => Value::UInt(u64::from(*x)),
        (_, MetricValue::LongValue(x)) => Value::UInt(*x),
        (_, MetricValue::FloatValue(x)) => Value::Float(f64::from(*x)),
        (_, MetricValue::DoubleValue(x)) => Value::Float(*x),
        (_, MetricValue::BooleanValue(x)) => Value::Bool(*x),
        (_, MetricValue::StringValue(x)) => Value::Str(x.clone()),
        (Some(dt), MetricValue::BytesValue(b)) if is_array(dt) => {
            Value::Json(serde_json::Value::Array(array(dt, b)?).to_string())
        }
        (_, MetricValue::BytesValue(b)) => Value::Bytes(b.clone()),
        (_, MetricValue::DatasetValue(d)) => Value::Json(dataset_json(d).to_string()),
        (_, MetricValue::TemplateValue(t)) => Value::Json(template_json(t).to_string()),
        (_, MetricValue::ExtensionValue(_)) => {
            return Err(
                "metric value is a Sparkplug extension this connector does not read".into(),
            );
        }
    })
}

fn is_array(dt: DataType) -> bool {
    (DataType::Int8Array as i32..=DataType::DateTimeArray as i32).contains(&(dt as i32))
}

fn number(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Splits `b` into `N`-byte little-endian elements.
fn fixed<const N: usize>(
    b: &[u8],
    element: impl Fn([u8; N]) -> serde_json::Value,
) -> Result<Vec<serde_json::Value>, String> {
    let chunks = b.chunks_exact(N);
    if !chunks.remainder().is_empty() {
        return Err(format!(
            "array of {} bytes is not a whole number of {N}-byte elements",
            b.len()
        ));
    }
    Ok(chunks
        .filter_map(|c| <[u8; N]>::try_from(c).ok())
        .map(element)
        .collect())
}

fn array(dt: DataType, b: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    use serde_json::Value as J;
    match dt {
        DataType::Int8Array => fixed::<1>(b, |x| J::from(i8::from_le_bytes(x))),
        DataType::Int16Array => fixed::<2>(b, |x| J::from(i16::from_le_bytes(x))),
        DataType::Int32Array => fixed::<4>(b, |x| J::from(i32::from_le_bytes(x))),
        DataType::Int64Array | DataType::DateTimeArray => {
            fixed::<8>(b, |x| J::from(i64::from_le_bytes(x)))
        }
        DataType::UInt8Array => fixed::<1>(b, |x| J::from(u8::from_le_bytes(x))),
        DataType::UInt16Array => fixed::<2>(b, |x| J::from(u16::from_le_bytes(x))),
        DataType::UInt32Array => fixed::<4>(b, |x| J::from(u32::from_le_bytes(x))),
        DataType::UInt64Array => fixed::<8>(b, |x| J::from(u64::from_le_bytes(x))),
        DataType::FloatArray => fixed::<4>(b, |x| number(f64::from(f32::from_le_bytes(x)))),
        DataType::DoubleArray => fixed::<8>(b, |x| number(f64::from_le_bytes(x))),
        DataType::BooleanArray => booleans(b),
        DataType::StringArray => strings(b),
        _ => Ok(Vec::new()),
    }
}

/// A 4-byte little-endian count, then the values packed most significant bit first.
fn booleans(b: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let (count, bits) = b
        .split_first_chunk::<4>()
        .ok_or("boolean array shorter than its 4-byte count")?;
    let count = usize::try_from(u32::from_le_bytes(*count)).unwrap_or(usize::MAX);
    if count.div_ceil(8) > bits.len() {
        return Err(format!(
            "boolean array announces {count} values but carries {} bytes",
            bits.len()
        ));
    }
    Ok((0..count)
        .map(|i| {
            let byte = bits.get(i / 8).copied().unwrap_or(0);
            serde_json::Value::Bool(byte & (0x80 >> (i % 8)) != 0)
        })
        .collect())
}

/// NUL-terminated UTF-8 strings, one after the other.
fn strings(b: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let body = b.strip_suffix(&[0]).unwrap_or(b);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|c| *c == 0)
        .map(|s| {
            std::str::from_utf8(s)
                .map(|s| serde_json::Value::String(s.to_owned()))
                .map_err(|e| format!("string array element is not UTF-8: {e}"))
        })
        .collect()
}

fn value_json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Int(i) => J::from(i),
        Value::UInt(u) => J::from(u),
        Value::Float(f) => number(f),
        Value::Str(s) => J::String(s),
        Value::Json(text) => serde_json::from_str(&text).unwrap_or(J::String(text)),
        Value::Bytes(b) => J::Array(b.into_iter().map(J::from).collect()),
    }
}

fn dataset_json(d: &DataSet) -> serde_json::Value {
    use data_set_value::Value as V;
    use serde_json::Value as J;
    let rows = d
        .rows
        .iter()
        .map(|row| {
            J::Array(
                row.elements
                    .iter()
                    .zip(d.types.iter().map(Some).chain(std::iter::repeat(None)))
                    .map(|(cell, code)| {
                        let dt = datatype(code.copied());
                        match &cell.value {
                            Some(V::IntValue(x)) => match dt {
                                Some(DataType::Int8) => J::from(low_i8(*x)),
                                Some(DataType::Int16) => J::from(low_i16(*x)),
                                Some(DataType::Int32) => J::from(as_i32(*x)),
                                _ => J::from(*x),
                            },
                            Some(V::LongValue(x)) => match dt {
                                Some(
                                    DataType::Int8
                                    | DataType::Int16
                                    | DataType::Int32
                                    | DataType::Int64
                                    | DataType::DateTime,
                                ) => J::from(as_i64(*x)),
                                _ => J::from(*x),
                            },
                            Some(V::FloatValue(x)) => number(f64::from(*x)),
                            Some(V::DoubleValue(x)) => number(*x),
                            Some(V::BooleanValue(x)) => J::Bool(*x),
                            Some(V::StringValue(x)) => J::String(x.clone()),
                            Some(V::ExtensionValue(_)) | None => J::Null,
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    serde_json::json!({ "columns": d.columns, "types": d.types, "rows": J::Array(rows) })
}

fn template_json(t: &Template) -> serde_json::Value {
    use parameter::Value as P;
    use serde_json::Value as J;
    let metrics: Vec<J> = t
        .metrics
        .iter()
        .map(|m| {
            let value = if m.is_null == Some(true) {
                J::Null
            } else {
                metric_value(m.value.as_ref(), m.datatype).map_or(J::Null, value_json)
            };
            serde_json::json!({ "name": m.name, "value": value })
        })
        .collect();
    let parameters: Vec<J> = t
        .parameters
        .iter()
        .map(|p| {
            let value = match &p.value {
                Some(P::IntValue(x)) => J::from(*x),
                Some(P::LongValue(x)) => J::from(*x),
                Some(P::FloatValue(x)) => number(f64::from(*x)),
                Some(P::DoubleValue(x)) => number(*x),
                Some(P::BooleanValue(x)) => J::Bool(*x),
                Some(P::StringValue(x)) => J::String(x.clone()),
                Some(P::ExtensionValue(_)) | None => J::Null,
            };
            serde_json::json!({ "name": p.name, "value": value })
        })
        .collect();
    serde_json::json!({
        "template_ref": t.template_ref,
        "version": t.version,
        "is_definition": t.is_definition,
        "metrics": metrics,
        "parameters": parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tahu::payload::{PropertyValue, data_set};

    fn metric(
        name: Option<&str>,
        alias: Option<u64>,
        datatype: DataType,
        value: MetricValue,
    ) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias,
            datatype: u32::try_from(datatype as i32).ok(),
            value: Some(value),
            ..Metric::default()
        }
    }

    fn by_alias(alias: u64, value: MetricValue, timestamp: Option<u64>) -> Metric {
        Metric {
            alias: Some(alias),
            timestamp,
            value: Some(value),
            ..Metric::default()
        }
    }

    fn payload(seq: Option<u64>, timestamp: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp,
            metrics,
            seq,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    fn decode(sessions: &mut Sessions, topic: &str, bytes: &[u8]) -> Decoded {
        sessions.decode(&Message {
            topic,
            payload: bytes,
            received_us: 5,
        })
    }

    fn nbirth() -> Vec<u8> {
        payload(
            Some(0),
            Some(1_700_000_000_000),
            vec![
                metric(
                    Some("bdSeq"),
                    None,
                    DataType::Int64,
                    MetricValue::LongValue(3),
                ),
                metric(
                    Some("Temperature"),
                    Some(1),
                    DataType::Double,
                    MetricValue::DoubleValue(20.0),
                ),
                metric(
                    Some("Count"),
                    Some(2),
                    DataType::Int32,
                    MetricValue::IntValue(0),
                ),
                metric(
                    Some("Running"),
                    Some(3),
                    DataType::Boolean,
                    MetricValue::BooleanValue(false),
                ),
            ],
        )
    }

    #[test]
    fn births_then_data_with_aliases_decode_to_named_metrics() {
        let mut sessions = Sessions::new(100_000);
        let birth = decode(&mut sessions, "spBv1.0/plant/NBIRTH/edge1", &nbirth());
        assert_eq!(birth.items.len(), 4);
        assert_eq!(
            birth.items[1].topic,
            "spBv1.0/plant/NBIRTH/edge1/Temperature"
        );
        assert_eq!(birth.items[1].value, Value::Float(20.0));
        assert_eq!(birth.items[1].event_time_us, 1_700_000_000_000_000);
        assert!(
            !birth.items[0].payload.is_empty(),
            "the first record keeps the raw payload"
        );
        assert!(birth.items[1].payload.is_empty());

        let dbirth = payload(
            Some(1),
            None,
            vec![metric(
                Some("Pressure"),
                Some(10),
                DataType::Float,
                MetricValue::FloatValue(1.0),
            )],
        );
        decode(&mut sessions, "spBv1.0/plant/DBIRTH/edge1/press", &dbirth);

        let ndata = payload(
            Some(2),
            Some(1_700_000_001_000),
            vec![
                by_alias(1, MetricValue::DoubleValue(21.5), Some(1_700_000_000_123)),
                by_alias(2, MetricValue::IntValue(u32::MAX - 4), None),
                by_alias(3, MetricValue::BooleanValue(true), None),
            ],
        );
        let data = decode(&mut sessions, "spBv1.0/plant/NDATA/edge1", &ndata);
        assert!(data.gaps.is_empty());
        let got: Vec<(&str, &Value, i64)> = data
            .items
            .iter()
            .map(|i| (i.topic.as_str(), &i.value, i.event_time_us))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "spBv1.0/plant/NDATA/edge1/Temperature",
                    &Value::Float(21.5),
                    1_700_000_000_123_000
                ),
                (
                    "spBv1.0/plant/NDATA/edge1/Count",
                    &Value::Int(-5),
                    1_700_000_001_000_000
                ),
                (
                    "spBv1.0/plant/NDATA/edge1/Running",
                    &Value::Bool(true),
                    1_700_000_001_000_000
                ),
            ]
        );
        assert!(
            data.items
                .iter()
                .all(|i| i.parse_error.is_none() && i.quality == Quality::Good)
        );

        let ddata = payload(
            Some(3),
            None,
            vec![by_alias(10, MetricValue::FloatValue(3.25), Some(9))],
        );
        let data = decode(&mut sessions, "spBv1.0/plant/DDATA/edge1/press", &ddata);
        assert_eq!(
            data.items[0].topic,
            "spBv1.0/plant/DDATA/edge1/press/Pressure"
        );
        assert_eq!(data.items[0].value, Value::Float(3.25));
        assert_eq!(data.items[0].event_time_us, 9000);
        assert_eq!(data.items[0].format, "sparkplug_b");
    }

    #[test]
    fn a_sequence_gap_is_reported_and_a_redelivery_is_not() {
        let mut sessions = Sessions::new(100_000);
        decode(
            &mut sessions,
            "spBv1.0/g/NBIRTH/n",
            &payload(Some(0), None, vec![]),
        );
        let data = |seq| payload(Some(seq), None, vec![]);
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(1))
                .gaps
                .is_empty()
        );
        let gap = decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(4)).gaps;
        assert_eq!(gap.len(), 1);
        assert_eq!(gap[0].count, 2);
        assert!(gap[0].detail.contains("g/n") && gap[0].detail.contains("expected seq 2, got 4"));
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(3))
                .gaps
                .is_empty(),
            "a redelivery"
        );
        assert!(
            decode(&mut sessions, "spBv1.0/g/DDATA/n/d", &data(5))
                .gaps
                .is_empty()
        );
        // The sequence wraps from 255 to 0.
        decode(
            &mut sessions,
            "spBv1.0/g/NBIRTH/n",
            &payload(Some(254), None, vec![]),
        );
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(255))
                .gaps
                .is_empty()
        );
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(0))
                .gaps
                .is_empty()
        );
        // A death ends the sequence: the next birth starts anew without a gap.
        decode(
            &mut sessions,
            "spBv1.0/g/NDEATH/n",
            &payload(None, None, vec![]),
        );
        decode(
            &mut sessions,
            "spBv1.0/g/NBIRTH/n",
            &payload(Some(0), None, vec![]),
        );
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/n", &data(1))
                .gaps
                .is_empty()
        );
        // Another node has its own sequence.
        assert!(
            decode(&mut sessions, "spBv1.0/g/NDATA/other", &data(77))
                .gaps
                .is_empty()
        );
    }

    #[test]
    fn an_alias_no_birth_declared_keeps_the_payload_and_says_why() {
        let mut sessions = Sessions::new(100_000);
        let bytes = payload(
            Some(9),
            None,
            vec![by_alias(7, MetricValue::DoubleValue(1.5), None)],
        );
        let decoded = decode(&mut sessions, "spBv1.0/g/NDATA/n", &bytes);
        let item = &decoded.items[0];
        assert_eq!(item.topic, "spBv1.0/g/NDATA/n");
        assert_eq!(item.value, Value::Float(1.5));
        assert_eq!(item.quality, Quality::Uncertain);
        assert_eq!(item.payload, bytes);
        assert!(item.parse_error.as_deref().unwrap().contains("alias 7"));
    }

    #[test]
    fn births_beyond_sparkplug_max_names_are_kept_in_part_and_say_so() {
        // Each named metric with an alias and a datatype takes two of the four places.
        let mut sessions = Sessions::new(4);
        let birth = |names: &[&str]| {
            let metrics = names
                .iter()
                .zip(1_u64..)
                .map(|(name, alias)| {
                    metric(
                        Some(name),
                        Some(alias),
                        DataType::Int32,
                        MetricValue::IntValue(1),
                    )
                })
                .collect();
            payload(Some(0), None, metrics)
        };
        let decoded = decode(
            &mut sessions,
            "spBv1.0/g/NBIRTH/a",
            &birth(&["x", "y", "z"]),
        );
        let note = decoded.items[0].parse_error.as_deref().unwrap_or_default();
        assert!(
            note.contains("2 names and aliases of this birth are not remembered")
                && note.contains("sparkplug_max_names (4)"),
            "{note}"
        );
        let other = decode(&mut sessions, "spBv1.0/g/NBIRTH/b", &birth(&["w"]));
        assert!(
            other.items[0].parse_error.is_some(),
            "the bound holds across nodes"
        );
        // A new birth of node a frees its places: node b's next birth is remembered whole.
        decode(
            &mut sessions,
            "spBv1.0/g/NBIRTH/a",
            &payload(Some(0), None, Vec::new()),
        );
        let again = decode(&mut sessions, "spBv1.0/g/NBIRTH/b", &birth(&["w"]));
        assert_eq!(again.items[0].parse_error, None);
        let data = payload(
            Some(1),
            None,
            vec![by_alias(1, MetricValue::IntValue(5), None)],
        );
        let decoded = decode(&mut sessions, "spBv1.0/g/NDATA/b", &data);
        assert_eq!(decoded.items[0].topic, "spBv1.0/g/NDATA/b/w");
    }

    #[test]
    fn a_new_nbirth_forgets_the_old_aliases() {
        let mut sessions = Sessions::new(100_000);
        decode(&mut sessions, "spBv1.0/g/NBIRTH/n", &nbirth());
        let rebirth = payload(
            Some(0),
            None,
            vec![metric(
                Some("Other"),
                Some(1),
                DataType::String,
                MetricValue::StringValue("x".into()),
            )],
        );
        decode(&mut sessions, "spBv1.0/g/NBIRTH/n", &rebirth);
        let data = payload(
            Some(1),
            None,
            vec![
                by_alias(1, MetricValue::StringValue("y".into()), None),
                by_alias(2, MetricValue::IntValue(1), None),
            ],
        );
        let decoded = decode(&mut sessions, "spBv1.0/g/NDATA/n", &data);
        assert_eq!(decoded.items[0].topic, "spBv1.0/g/NDATA/n/Other");
        assert!(
            decoded.items[1].parse_error.is_some(),
            "alias 2 died with the old session"
        );
    }

    #[test]
    fn signed_integers_arrays_and_datasets_decode_by_datatype() {
        let value = |dt, v| metric_value(Some(&v), Some(dt as u32)).unwrap();
        assert_eq!(
            value(DataType::Int8, MetricValue::IntValue(0xFF)),
            Value::Int(-1)
        );
        assert_eq!(
            value(DataType::Int8, MetricValue::IntValue(u32::MAX)),
            Value::Int(-1)
        );
        assert_eq!(
            value(DataType::Int16, MetricValue::IntValue(0xFFFE)),
            Value::Int(-2)
        );
        assert_eq!(
            value(DataType::Int64, MetricValue::LongValue(u64::MAX)),
            Value::Int(-1)
        );
        assert_eq!(
            value(DataType::UInt32, MetricValue::IntValue(u32::MAX)),
            Value::UInt(4_294_967_295)
        );
        assert_eq!(
            value(DataType::UInt64, MetricValue::LongValue(u64::MAX)),
            Value::UInt(u64::MAX)
        );
        assert_eq!(
            value(
                DataType::DateTime,
                MetricValue::LongValue(1_700_000_000_000)
            ),
            Value::Int(1_700_000_000_000)
        );
        assert_eq!(
            value(DataType::Text, MetricValue::StringValue("t".into())),
            Value::Str("t".into())
        );
        assert_eq!(
            value(DataType::Bytes, MetricValue::BytesValue(vec![1, 2])),
            Value::Bytes(vec![1, 2])
        );
        assert_eq!(
            value(
                DataType::Int16Array,
                MetricValue::BytesValue(vec![0xFF, 0xFF, 2, 0])
            ),
            Value::Json("[-1,2]".into())
        );
        assert_eq!(
            value(
                DataType::FloatArray,
                MetricValue::BytesValue(1.5f32.to_le_bytes().to_vec())
            ),
            Value::Json("[1.5]".into())
        );
        assert_eq!(
            value(
                DataType::BooleanArray,
                MetricValue::BytesValue(vec![3, 0, 0, 0, 0b1010_0000])
            ),
            Value::Json("[true,false,true]".into())
        );
        assert_eq!(
            value(
                DataType::StringArray,
                MetricValue::BytesValue(b"ab\0c\0".to_vec())
            ),
            Value::Json(r#"["ab","c"]"#.into())
        );
        assert!(
            metric_value(
                Some(&MetricValue::BytesValue(vec![1, 2, 3])),
                Some(DataType::Int16Array as u32)
            )
            .is_err()
        );
        assert!(
            metric_value(
                Some(&MetricValue::BytesValue(vec![9, 0, 0, 0, 1])),
                Some(DataType::BooleanArray as u32)
            )
            .is_err()
        );

        let dataset = DataSet {
            num_of_columns: Some(2),
            columns: vec!["a".into(), "b".into()],
            types: vec![DataType::Int8 as u32, DataType::String as u32],
            rows: vec![data_set::Row {
                elements: vec![
                    data_set::DataSetValue {
                        value: Some(data_set_value::Value::IntValue(0xFF)),
                    },
                    data_set::DataSetValue {
                        value: Some(data_set_value::Value::StringValue("x".into())),
                    },
                ],
            }],
        };
        assert_eq!(
            value(DataType::DataSet, MetricValue::DatasetValue(dataset)),
            Value::Json(r#"{"columns":["a","b"],"rows":[[-1,"x"]],"types":[1,12]}"#.into())
        );
    }

    #[test]
    fn metric_quality_and_nulls_follow_the_metric() {
        let mut stale = metric(
            Some("t"),
            None,
            DataType::Double,
            MetricValue::DoubleValue(1.0),
        );
        stale.properties = Some(PropertySet {
            keys: vec!["Quality".into()],
            values: vec![PropertyValue {
                r#type: Some(DataType::Int32 as u32),
                is_null: None,
                value: Some(property_value::Value::IntValue(500)),
            }],
        });
        let mut null = metric(
            Some("n"),
            None,
            DataType::Double,
            MetricValue::DoubleValue(1.0),
        );
        null.is_null = Some(true);
        let mut sessions = Sessions::new(100_000);
        let decoded = decode(
            &mut sessions,
            "spBv1.0/g/NDATA/n",
            &payload(Some(1), None, vec![stale, null]),
        );
        assert_eq!(decoded.items[0].quality, Quality::Uncertain);
        assert_eq!(decoded.items[1].value, Value::Null);
        assert_eq!(decoded.items[1].parse_error, None);
    }

    #[test]
    fn garbage_deaths_and_state_messages_still_become_records() {
        let mut sessions = Sessions::new(100_000);
        let garbage = decode(&mut sessions, "spBv1.0/g/NDATA/n", b"\xff\xff\xff");
        assert_eq!(garbage.items.len(), 1);
        assert_eq!(garbage.items[0].quality, Quality::Bad);
        assert_eq!(garbage.items[0].payload, b"\xff\xff\xff");
        assert!(
            garbage.items[0]
                .parse_error
                .as_deref()
                .unwrap()
                .contains("not a Sparkplug B payload")
        );

        let death = decode(
            &mut sessions,
            "spBv1.0/g/DDEATH/n/d",
            &payload(Some(3), None, vec![]),
        );
        assert_eq!(death.items.len(), 1);
        assert_eq!(death.items[0].topic, "spBv1.0/g/DDEATH/n/d");
        assert_eq!(death.items[0].value, Value::Null);

        let state = decode(&mut sessions, "spBv1.0/STATE/host1", br#"{"online": true}"#);
        assert_eq!(
            state.items[0].value,
            Value::Json(r#"{"online":true}"#.into())
        );
        assert_eq!(state.items[0].parse_error, None);
    }

    #[test]
    fn topics_parse_by_the_sparkplug_namespace() {
        assert_eq!(
            parse_topic("spBv1.0/g/DDATA/n/d"),
            Some(Topic::Node {
                group: "g",
                kind: Kind::DData,
                node: "n",
                device: Some("d")
            })
        );
        assert_eq!(parse_topic("spBv1.0/STATE/h"), Some(Topic::State));
        assert_eq!(
            parse_topic("spBv1.0/g/NDATA/n/d"),
            None,
            "a node message has no device"
        );
        assert_eq!(parse_topic("spBv1.0/g/DDATA/n"), None);
        assert_eq!(parse_topic("spAv1.0/g/NDATA/n"), None);
        assert_eq!(parse_topic("spBv1.0/g/XDATA/n"), None);
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn metric_value_strategy() -> impl Strategy<Value = Option<MetricValue>> {
            prop_oneof![
                Just(None),
                any::<u32>().prop_map(|v| Some(MetricValue::IntValue(v))),
                any::<u64>().prop_map(|v| Some(MetricValue::LongValue(v))),
                any::<f32>().prop_map(|v| Some(MetricValue::FloatValue(v))),
                any::<f64>().prop_map(|v| Some(MetricValue::DoubleValue(v))),
                any::<bool>().prop_map(|v| Some(MetricValue::BooleanValue(v))),
                ".{0,8}".prop_map(|v| Some(MetricValue::StringValue(v))),
                proptest::collection::vec(any::<u8>(), 0..24)
                    .prop_map(|v| Some(MetricValue::BytesValue(v))),
            ]
        }

        fn metric_strategy() -> impl Strategy<Value = Metric> {
            (
                proptest::option::of("[a-c]{0,2}"),
                proptest::option::of(0u64..6),
                proptest::option::of(any::<u64>()),
                proptest::option::of(0u32..40),
                proptest::option::of(any::<bool>()),
                metric_value_strategy(),
            )
                .prop_map(|(name, alias, timestamp, datatype, is_null, value)| {
                    Metric {
                        name,
                        alias,
                        timestamp,
                        datatype,
                        is_null,
                        value,
                        ..Metric::default()
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn any_sequence_of_wellformed_and_corrupted_payloads(
                messages in proptest::collection::vec(
                    (
                        prop::sample::select(vec!["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH", "NCMD"]),
                        proptest::option::of(any::<u64>()),
                        proptest::option::of(any::<u64>()),
                        proptest::collection::vec(metric_strategy(), 0..6),
                        proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
                    ),
                    1..8,
                ),
            ) {
                let mut sessions = Sessions::new(100_000);
                for (kind, seq, timestamp, metrics, corruption) in messages {
                    let topic = if kind.starts_with('D') {
                        format!("spBv1.0/g/{kind}/n/d")
                    } else {
                        format!("spBv1.0/g/{kind}/n")
                    };
                    let mut bytes = payload(seq, timestamp, metrics);
                    if let Some((at, byte)) = corruption
                        && !bytes.is_empty()
                    {
                        let i = at.index(bytes.len());
                        bytes[i] = byte;
                    }
                    let decoded = decode(&mut sessions, &topic, &bytes);
                    prop_assert!(!decoded.items.is_empty());
                }
            }
        }
    }
}
