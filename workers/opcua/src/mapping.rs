//! A `DataValue` from the server → the value columns of the opcua table. Sans-IO: no session,
//! no clock (the caller passes "now").
//!
//! - Scalars of the built-in types go to `value_num`/`value_str`/`value_bool` through
//!   [`Value`]: booleans, signed and unsigned integers, floats and text as themselves;
//!   `DateTime` as RFC 3339 text, `Guid`, `NodeId`, `QualifiedName` (`ns:name`),
//!   `LocalizedText` (its text) and `XmlElement` as text; `StatusCode` as its number;
//!   `ByteString` as bytes.
//! - Arrays, structures (`ExtensionObject`), nested `Variant`/`DataValue` and `DiagnosticInfo`
//!   become JSON text in the OPC-UA JSON encoding (Part 6 §5.4), so a reader can decode them
//!   without knowing our code.
//! - `event_time` is the source timestamp, else the server timestamp, else "now" (the server
//!   stamps its own time at sampling, so it may be earlier than the source timestamp: it is
//!   kept as metadata, never used for ordering when a source timestamp exists).
//! - A missing status code means Good (Part 4 §7.7.1); the severity bits decide the quality.
//!   Uncertain and Bad values are kept, never dropped.

use iot_connector_proto::{Quality, Value};
use opcua::types::{
    ContextOwned, DataValue, DateTime, StatusCode, Variant,
    json::{JsonStreamWriter, JsonWriter},
};

/// Ticks (100 ns) between 1601-01-01 and 1970-01-01.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// The table's columns for one value, apart from the node's own identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// Source timestamp, else server timestamp, else the receive time (µs, UTC).
    pub event_time_us: i64,
    /// From the status code's severity.
    pub quality: Quality,
    /// The value in its column type.
    pub value: Value,
    /// The raw status code.
    pub status_code: u32,
    /// The source timestamp, when the server gave one.
    pub source_time_us: Option<i64>,
    /// The server timestamp, when the server gave one.
    pub server_time_us: Option<i64>,
}

/// Maps values; holds the (default) encoding context the JSON encoder needs.
#[derive(Default)]
pub struct Mapper {
    context: ContextOwned,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper").finish_non_exhaustive()
    }
}

impl Mapper {
    /// Maps one data value received at `now_us`.
    pub fn map(&self, data_value: DataValue, now_us: i64) -> Mapped {
        let status = data_value.status.unwrap_or(StatusCode::Good);
        let source_time_us = data_value.source_timestamp.as_ref().and_then(unix_us);
        let server_time_us = data_value.server_timestamp.as_ref().and_then(unix_us);
        Mapped {
            event_time_us: source_time_us.or(server_time_us).unwrap_or(now_us),
            quality: quality(status),
            value: data_value.value.map_or(Value::Null, |v| self.value(v)),
            status_code: status.bits(),
            source_time_us,
            server_time_us,
        }
    }

    /// The column value of a variant.
    pub fn value(&self, variant: Variant) -> Value {
        match variant {
            Variant::Empty => Value::Null,
            Variant::Boolean(b) => Value::Bool(b),
            Variant::SByte(v) => Value::Int(v.into()),
            Variant::Int16(v) => Value::Int(v.into()),
            Variant::Int32(v) => Value::Int(v.into()),
            Variant::Int64(v) => Value::Int(v),
            Variant::Byte(v) => Value::UInt(v.into()),
            Variant::UInt16(v) => Value::UInt(v.into()),
            Variant::UInt32(v) => Value::UInt(v.into()),
            Variant::UInt64(v) => Value::UInt(v),
            Variant::Float(v) => Value::Float(v.into()),
            Variant::Double(v) => Value::Float(v),
            Variant::String(s) => s.value().clone().map_or(Value::Null, Value::Str),
            Variant::DateTime(d) => Value::Str(d.to_rfc3339()),
            Variant::Guid(g) => Value::Str(g.to_string()),
            Variant::StatusCode(s) => Value::UInt(s.bits().into()),
            Variant::ByteString(b) => b.value.map_or(Value::Null, Value::Bytes),
            Variant::XmlElement(x) => Value::Str(x.to_string()),
            Variant::QualifiedName(q) => Value::Str(if q.namespace_index == 0 {
                q.name.to_string()
            } else {
                format!("{}:{}", q.namespace_index, q.name)
            }),
            Variant::LocalizedText(t) => Value::Str(t.text.to_string()),
            Variant::NodeId(n) => Value::Str(n.to_string()),
            Variant::ExpandedNodeId(n) => Value::Str(n.to_string()),
            Variant::Variant(inner) => self.value(*inner),
            structured @ (Variant::ExtensionObject(_)
            | Variant::DataValue(_)
            | Variant::DiagnosticInfo(_)
            | Variant::Array(_)) => self.json(&structured),
        }
    }

    /// OPC-UA JSON text of a value; a value the encoder refuses becomes `null` with the reason
    /// (it is still a record: "we had a value we could not encode" differs from "no value").
    fn json(&self, variant: &Variant) -> Value {
        let mut out: Vec<u8> = Vec::new();
        let result = {
            let mut writer = JsonStreamWriter::new(&mut out as &mut dyn std::io::Write);
            variant
                .serialize_variant_value(&mut writer, &self.context.context())
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    writer
                        .finish_document()
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
        };
        match result.map(|()| String::from_utf8(out)) {
            Ok(Ok(text)) => Value::Json(text),
            Ok(Err(e)) => Value::Str(format!("unencodable value: {e}")),
            Err(e) => Value::Str(format!("unencodable value: {e}")),
        }
    }
}

/// Quality from a status code's severity bits.
pub fn quality(status: StatusCode) -> Quality {
    if status.is_good() {
        Quality::Good
    } else if status.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Bad
    }
}

/// µs since the Unix epoch; `None` for the null time and for times outside `i64` µs.
pub fn unix_us(time: &DateTime) -> Option<i64> {
    if time.is_null() {
        return None;
    }
    time.checked_ticks()
        .checked_sub(UNIX_EPOCH_TICKS)
        .map(|ticks| ticks / 10)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opcua::types::{
        Array, ByteString, EUInformation, ExtensionObject, Guid, LocalizedText, NodeId,
        QualifiedName, UAString, VariantScalarTypeId,
    };

    use super::*;

    fn dv(value: Variant) -> DataValue {
        DataValue {
            value: Some(value),
            ..Default::default()
        }
    }

    #[test]
    fn scalars_go_to_their_value_columns() {
        let m = Mapper::default();
        assert_eq!(m.value(Variant::Boolean(true)), Value::Bool(true));
        assert_eq!(m.value(Variant::SByte(-3)), Value::Int(-3));
        assert_eq!(m.value(Variant::Int16(-300)), Value::Int(-300));
        assert_eq!(m.value(Variant::Int32(-70_000)), Value::Int(-70_000));
        assert_eq!(m.value(Variant::Int64(i64::MIN)), Value::Int(i64::MIN));
        assert_eq!(m.value(Variant::Byte(200)), Value::UInt(200));
        assert_eq!(m.value(Variant::UInt16(60_000)), Value::UInt(60_000));
        assert_eq!(
            m.value(Variant::UInt32(u32::MAX)),
            Value::UInt(u32::MAX.into())
        );
        assert_eq!(m.value(Variant::UInt64(u64::MAX)), Value::UInt(u64::MAX));
        assert_eq!(m.value(Variant::Float(0.5)), Value::Float(0.5));
        assert_eq!(m.value(Variant::Double(-1.25)), Value::Float(-1.25));
        assert_eq!(
            m.value(Variant::String(UAString::from("run"))),
            Value::Str("run".into())
        );
        assert_eq!(m.value(Variant::String(UAString::null())), Value::Null);
        assert_eq!(m.value(Variant::Empty), Value::Null);
        assert_eq!(
            m.value(Variant::StatusCode(StatusCode::BadTimeout)),
            Value::UInt(StatusCode::BadTimeout.bits().into())
        );
        assert_eq!(
            m.value(Variant::ByteString(ByteString::from(vec![1u8, 2, 255]))),
            Value::Bytes(vec![1, 2, 255])
        );
        assert_eq!(
            m.value(Variant::LocalizedText(Box::new(LocalizedText::new(
                "en", "Hot"
            )))),
            Value::Str("Hot".into())
        );
        assert_eq!(
            m.value(Variant::QualifiedName(Box::new(QualifiedName::new(
                2, "Speed"
            )))),
            Value::Str("2:Speed".into())
        );
        assert_eq!(
            m.value(Variant::NodeId(Box::new(NodeId::new(2, "Line1.Speed")))),
            Value::Str("ns=2;s=Line1.Speed".into())
        );
        let guid = Guid::new();
        assert_eq!(
            m.value(Variant::Guid(Box::new(guid.clone()))),
            Value::Str(guid.to_string())
        );
        let Value::Str(text) = m.value(Variant::DateTime(Box::new(DateTime::ymd_hms(
            2024, 3, 1, 12, 0, 5,
        )))) else {
            panic!("a DateTime is text");
        };
        assert!(text.starts_with("2024-03-01T12:00:05"), "{text}");
    }

    #[test]
    fn arrays_become_json_text() {
        let m = Mapper::default();
        let array = Array::new(
            VariantScalarTypeId::Double,
            vec![Variant::Double(1.5), Variant::Double(-2.0)],
        )
        .unwrap();
        let Value::Json(text) = m.value(Variant::Array(Box::new(array))) else {
            panic!("an array is JSON");
        };
        let parsed: Vec<f64> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, [1.5, -2.0]);
        let array = Array::new(
            VariantScalarTypeId::String,
            vec![Variant::from("a"), Variant::from("b\"c")],
        )
        .unwrap();
        assert_eq!(
            m.value(Variant::Array(Box::new(array))),
            Value::Json(r#"["a","b\"c"]"#.into())
        );
        let array = Array::new(
            VariantScalarTypeId::Boolean,
            vec![Variant::Boolean(true), Variant::Boolean(false)],
        )
        .unwrap();
        let Value::Json(text) = m.value(Variant::Array(Box::new(array))) else {
            panic!("an array is JSON");
        };
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::json!([true, false]));
    }

    #[test]
    fn structures_become_json_objects_with_their_fields() {
        let m = Mapper::default();
        let info = EUInformation {
            namespace_uri: "http://www.opcfoundation.org/UA/units/un/cefact".into(),
            unit_id: 4408652,
            display_name: LocalizedText::new("", "°C"),
            description: LocalizedText::new("", "degree Celsius"),
        };
        let Value::Json(text) = m.value(Variant::ExtensionObject(ExtensionObject::from_message(
            info,
        ))) else {
            panic!("a structure is JSON");
        };
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rendered = parsed.to_string();
        assert!(rendered.contains("4408652"), "{rendered}");
        assert!(rendered.contains("degree Celsius"), "{rendered}");
    }

    #[test]
    fn source_timestamp_is_the_event_time_and_both_are_kept() {
        let m = Mapper::default();
        let source = DateTime::ymd_hms(2024, 1, 1, 0, 0, 1);
        let server = DateTime::ymd_hms(2024, 1, 1, 0, 0, 0);
        let mapped = m.map(
            DataValue {
                value: Some(Variant::Double(1.0)),
                status: None,
                source_timestamp: Some(source),
                server_timestamp: Some(server),
                ..Default::default()
            },
            42,
        );
        assert_eq!(mapped.source_time_us, Some(1_704_067_201_000_000));
        assert_eq!(mapped.server_time_us, Some(1_704_067_200_000_000));
        assert_eq!(mapped.event_time_us, 1_704_067_201_000_000);
        assert_eq!(mapped.quality, Quality::Good);
        assert_eq!(mapped.status_code, 0);
    }

    #[test]
    fn without_a_source_timestamp_the_server_or_receive_time_is_used() {
        let m = Mapper::default();
        let server = DateTime::ymd_hms(2024, 1, 1, 0, 0, 0);
        let mapped = m.map(
            DataValue {
                value: Some(Variant::Int32(1)),
                server_timestamp: Some(server),
                ..Default::default()
            },
            42,
        );
        assert_eq!(mapped.event_time_us, 1_704_067_200_000_000);
        assert_eq!(mapped.source_time_us, None);
        let mapped = m.map(dv(Variant::Int32(1)), 42);
        assert_eq!(mapped.event_time_us, 42);
        assert_eq!(mapped.server_time_us, None);
        let mapped = m.map(
            DataValue {
                value: Some(Variant::Int32(1)),
                source_timestamp: Some(DateTime::null()),
                ..Default::default()
            },
            7,
        );
        assert_eq!((mapped.source_time_us, mapped.event_time_us), (None, 7));
    }

    #[test]
    fn status_codes_decide_quality_and_keep_the_value() {
        let m = Mapper::default();
        let mapped = m.map(
            DataValue {
                value: Some(Variant::from("stale")),
                status: Some(StatusCode::UncertainLastUsableValue),
                ..Default::default()
            },
            0,
        );
        assert_eq!(mapped.quality, Quality::Uncertain);
        assert_eq!(mapped.value, Value::Str("stale".into()));
        assert_eq!(
            mapped.status_code,
            StatusCode::UncertainLastUsableValue.bits()
        );
        let mapped = m.map(
            DataValue {
                value: None,
                status: Some(StatusCode::BadNodeIdUnknown),
                ..Default::default()
            },
            0,
        );
        assert_eq!((mapped.quality, mapped.value), (Quality::Bad, Value::Null));
        assert_eq!(quality(StatusCode::Good), Quality::Good);
        // Info bits on a Good code do not make it less good.
        assert_eq!(quality(StatusCode::GoodOverload), Quality::Good);
    }

    /// Whatever a server sends (any variant, nested or in arrays, any status code and
    /// timestamps), the value maps to one record without a panic, and what becomes JSON text
    /// is valid JSON.
    mod never_panics {
        use proptest::prelude::*;

        use super::*;

        fn scalar() -> impl Strategy<Value = Variant> {
            prop_oneof![
                Just(Variant::Empty),
                any::<bool>().prop_map(Variant::Boolean),
                any::<i8>().prop_map(Variant::SByte),
                any::<i64>().prop_map(Variant::Int64),
                any::<u64>().prop_map(Variant::UInt64),
                any::<f32>().prop_map(Variant::Float),
                any::<f64>().prop_map(Variant::Double),
                ".{0,24}".prop_map(|s| Variant::String(UAString::from(s))),
                proptest::collection::vec(any::<u8>(), 0..48)
                    .prop_map(|b| Variant::ByteString(ByteString::from(b))),
                any::<i64>().prop_map(|t| Variant::DateTime(Box::new(DateTime::from(t)))),
                any::<u32>().prop_map(|c| Variant::StatusCode(StatusCode::from(c))),
                (any::<u16>(), ".{0,12}").prop_map(|(ns, n)| Variant::QualifiedName(Box::new(
                    QualifiedName::new(ns, n)
                ))),
                (any::<u16>(), any::<u32>())
                    .prop_map(|(ns, id)| Variant::NodeId(Box::new(NodeId::new(ns, id)))),
                ".{0,12}"
                    .prop_map(|t| Variant::LocalizedText(Box::new(LocalizedText::new("", &t)))),
            ]
        }

        fn variant() -> impl Strategy<Value = Variant> {
            scalar().prop_recursive(3, 48, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(any::<f64>(), 0..8).prop_map(Variant::from),
                    proptest::collection::vec(any::<i32>(), 0..8).prop_map(Variant::from),
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(|values| {
                        // An array of variants holds each element boxed as a variant.
                        let boxed = values.into_iter().map(|v| Variant::Variant(Box::new(v)));
                        Variant::from((VariantScalarTypeId::Variant, boxed.collect::<Vec<_>>()))
                    }),
                    inner.prop_map(|v| Variant::Variant(Box::new(v))),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_value_maps_to_one_record_and_structures_to_valid_json(
                value in variant(),
                status in any::<u32>(),
                source in proptest::option::of(any::<i64>()),
                server in proptest::option::of(any::<i64>()),
            ) {
                let mapped = Mapper::default().map(
                    DataValue {
                        value: Some(value),
                        status: Some(StatusCode::from(status)),
                        source_timestamp: source.map(DateTime::from),
                        server_timestamp: server.map(DateTime::from),
                        ..Default::default()
                    },
                    7,
                );
                if let Value::Json(text) = &mapped.value {
                    prop_assert!(
                        serde_json::from_str::<serde_json::Value>(text).is_ok(),
                        "not JSON: {}", text
                    );
                }
                prop_assert_eq!(mapped.status_code, status);
            }
        }
    }
}
