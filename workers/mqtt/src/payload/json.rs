//! `payload = "json"`: the value (and optionally the event time) picked out of a JSON document
//! with JSON pointers (RFC 6901).

use iot_connector_proto::{Quality, Value};

use super::{Item, Message, time};

/// Decodes one JSON message. Numbers, strings and booleans go to the value columns; objects and
/// arrays are kept as JSON text. A problem with the value makes the record bad; a problem with
/// only the timestamp keeps the value, uses the receive time and marks it uncertain.
pub fn decode(
    message: &Message<'_>,
    value_path: Option<&str>,
    timestamp_path: Option<&str>,
) -> Item {
    let mut item = Item {
        topic: message.topic.to_owned(),
        event_time_us: message.received_us,
        quality: Quality::Good,
        value: Value::Null,
        payload: message.payload.to_vec(),
        format: "json",
        parse_error: None,
    };
    let document: serde_json::Value = match serde_json::from_slice(message.payload) {
        Ok(document) => document,
        Err(e) => {
            item.quality = Quality::Bad;
            item.parse_error = Some(format!("not JSON: {e}"));
            return item;
        }
    };
    let mut problems = Vec::new();
    match value_path {
        None => item.value = to_value(&document),
        Some(path) => match document.pointer(path) {
            Some(found) => item.value = to_value(found),
            None => {
                item.quality = Quality::Bad;
                problems.push(format!("no value at JSON pointer {path:?}"));
            }
        },
    }
    if let Some(path) = timestamp_path {
        match document.pointer(path).map(timestamp_us) {
            Some(Ok(us)) => item.event_time_us = us,
            Some(Err(e)) => problems.push(format!("timestamp at {path:?}: {e}")),
            None => problems.push(format!("no timestamp at JSON pointer {path:?}")),
        }
        if !problems.is_empty() && item.quality == Quality::Good {
            item.quality = Quality::Uncertain;
        }
    }
    if !problems.is_empty() {
        item.parse_error = Some(problems.join("; "));
    }
    item
}

/// A JSON value to the record's value: integers stay exact, objects and arrays become JSON text.
pub fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                n.as_f64().map_or(Value::Null, Value::Float)
            }
        }
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::Json(json.to_string()),
    }
}

/// A timestamp found in the document: epoch seconds/ms/µs/ns as a number or numeric string, or
/// an RFC 3339 string.
fn timestamp_us(json: &serde_json::Value) -> Result<i64, String> {
    match json {
        serde_json::Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not a timestamp"))
            .and_then(time::epoch_number_to_us),
        serde_json::Value::String(s) => match s.trim().parse::<f64>() {
            Ok(number) => time::epoch_number_to_us(number),
            Err(_) => time::rfc3339_to_us(s),
        },
        other => Err(format!("{other} is not a timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_with(payload: &str, value: Option<&str>, ts: Option<&str>) -> Item {
        let message = Message {
            topic: "plant/1/temp",
            payload: payload.as_bytes(),
            received_us: 7,
        };
        decode(&message, value, ts)
    }

    #[test]
    fn scalars_go_to_the_value_columns_and_structures_stay_json() {
        assert_eq!(decode_with("21.5", None, None).value, Value::Float(21.5));
        assert_eq!(decode_with("-3", None, None).value, Value::Int(-3));
        assert_eq!(
            decode_with("18446744073709551615", None, None).value,
            Value::UInt(u64::MAX)
        );
        assert_eq!(decode_with("true", None, None).value, Value::Bool(true));
        assert_eq!(
            decode_with(r#""on""#, None, None).value,
            Value::Str("on".into())
        );
        assert_eq!(decode_with("null", None, None).value, Value::Null);
        assert_eq!(
            decode_with(r#"{"a": [1, 2]}"#, None, None).value,
            Value::Json(r#"{"a":[1,2]}"#.into())
        );
        assert_eq!(
            decode_with(r#"{"v": {"x": 1}}"#, Some("/v"), None).value,
            Value::Json(r#"{"x":1}"#.into())
        );
    }

    #[test]
    fn pointers_pick_the_value_and_the_event_time() {
        let item = decode_with(
            r#"{"value": 21.5, "ts": 1700000000123, "unit": "C"}"#,
            Some("/value"),
            Some("/ts"),
        );
        assert_eq!(item.value, Value::Float(21.5));
        assert_eq!(item.event_time_us, 1_700_000_000_123_000);
        assert_eq!(item.quality, Quality::Good);
        assert_eq!(item.parse_error, None);
        assert_eq!(
            item.payload,
            br#"{"value": 21.5, "ts": 1700000000123, "unit": "C"}"#
        );

        let item = decode_with(
            r#"{"data": [{"v": 1}], "time": "2023-11-14T22:13:20Z"}"#,
            Some("/data/0/v"),
            Some("/time"),
        );
        assert_eq!(item.value, Value::Int(1));
        assert_eq!(item.event_time_us, 1_700_000_000_000_000);

        let item = decode_with(r#"{"v": 1, "ts": "1700000000"}"#, Some("/v"), Some("/ts"));
        assert_eq!(item.event_time_us, 1_700_000_000_000_000);
    }

    #[test]
    fn a_document_that_is_not_json_is_kept_raw_and_flagged_bad() {
        let item = decode_with("{not json", Some("/v"), Some("/ts"));
        assert_eq!(item.quality, Quality::Bad);
        assert_eq!(item.value, Value::Null);
        assert_eq!(item.payload, b"{not json");
        assert!(item.parse_error.unwrap().starts_with("not JSON"));
    }

    #[test]
    fn a_missing_value_is_bad_and_a_missing_timestamp_only_uncertain() {
        let item = decode_with(r#"{"x": 1, "ts": 1700000000}"#, Some("/v"), Some("/ts"));
        assert_eq!(item.quality, Quality::Bad);
        assert!(item.parse_error.unwrap().contains("no value at"));

        let item = decode_with(r#"{"v": 1}"#, Some("/v"), Some("/ts"));
        assert_eq!(item.quality, Quality::Uncertain);
        assert_eq!(item.value, Value::Int(1));
        assert_eq!(item.event_time_us, 7);
        assert!(item.parse_error.unwrap().contains("no timestamp at"));

        let item = decode_with(r#"{"v": 1, "ts": "yesterday"}"#, Some("/v"), Some("/ts"));
        assert_eq!(item.quality, Quality::Uncertain);
        assert!(item.parse_error.unwrap().contains("RFC 3339"));

        let item = decode_with(r#"{"v": 1, "ts": true}"#, Some("/v"), Some("/ts"));
        assert_eq!(item.event_time_us, 7);
        assert!(item.parse_error.is_some());
    }
}
