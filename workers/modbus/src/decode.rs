//! Registers and bits as read → the value of one tag. The only place that knows data types, byte
//! orders, strings, scale and offset.
//!
//! Byte orders name the bytes of a 32-bit value `ABCD` (A most significant) in the order the
//! device sends them, two bytes per register:
//!
//! | order | registers of `0x11223344` | rule to undo it |
//! |---|---|---|
//! | `ABCD` | `1122 3344` | none (big-endian, the Modbus norm) |
//! | `CDAB` | `3344 1122` | reverse the register order |
//! | `BADC` | `2211 4433` | swap the two bytes of every register |
//! | `DCBA` | `4433 2211` | both (little-endian) |
//!
//! 64-bit values use the same letters: `CDAB` means "lowest register first" for all four
//! registers, `BADC` swaps the bytes within each register, `DCBA` is fully little-endian. So
//! `0x1122334455667788` in `CDAB` is `7788 5566 3344 1122`.
//!
//! Strings are `length` registers, two characters each, high byte first (`ABCD`, `CDAB`) or low
//! byte first (`BADC`, `DCBA`); the text ends at the first NUL. Text that is not UTF-8 is
//! delivered with replacement characters and `uncertain` quality (`raw` keeps the bytes).
//!
//! Integers keep their exact value when `scale = 1` and `offset = 0`; otherwise the result is
//! `raw × scale + offset` as a double. Floats that are NaN or infinite are delivered with
//! `uncertain` quality. Nothing here panics, whatever the device sent.

use iot_connector_config::{ByteOrder, DataType, ModbusRegister};
use iot_connector_proto::{Quality, Value};

/// One decoded reading of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `good`, or why not.
    pub quality: Quality,
    /// The value (`Null` when bad).
    pub value: Value,
    /// The tag's registers as read, big-endian, or one byte (0/1) per bit.
    pub raw: Vec<u8>,
}

impl Reading {
    /// A reading without a value: exception response, malformed response.
    pub fn bad() -> Self {
        Self {
            quality: Quality::Bad,
            value: Value::Null,
            raw: Vec::new(),
        }
    }
}

/// The `data_type` column text.
pub fn data_type_name(data_type: DataType) -> &'static str {
    match data_type {
        DataType::Bool => "bool",
        DataType::Int16 => "int16",
        DataType::Uint16 => "uint16",
        DataType::Int32 => "int32",
        DataType::Uint32 => "uint32",
        DataType::Int64 => "int64",
        DataType::Uint64 => "uint64",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::String => "string",
    }
}

/// A bit from a coil or discrete input.
pub fn decode_bit(bit: bool) -> Reading {
    Reading {
        quality: Quality::Good,
        value: Value::Bool(bit),
        raw: vec![u8::from(bit)],
    }
}

/// A tag's registers, exactly `register_count` of them, as read; anything else is `bad`.
pub fn decode_registers(words: &[u16], register: &ModbusRegister) -> Reading {
    let expected = usize::from(register.data_type.register_count(register.length));
    if words.len() != expected || expected == 0 {
        return Reading::bad();
    }
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    let (quality, value) = match register.data_type {
        DataType::Bool => (Quality::Good, Value::Bool(words.iter().any(|w| *w != 0))),
        DataType::Int16 => match ordered::<2>(words, register.byte_order) {
            Some(b) => integer(i64::from(i16::from_be_bytes(b)), register),
            None => return Reading::bad(),
        },
        DataType::Uint16 => match ordered::<2>(words, register.byte_order) {
            Some(b) => unsigned(u64::from(u16::from_be_bytes(b)), register),
            None => return Reading::bad(),
        },
        DataType::Int32 => match ordered::<4>(words, register.byte_order) {
            Some(b) => integer(i64::from(i32::from_be_bytes(b)), register),
            None => return Reading::bad(),
        },
        DataType::Uint32 => match ordered::<4>(words, register.byte_order) {
            Some(b) => unsigned(u64::from(u32::from_be_bytes(b)), register),
            None => return Reading::bad(),
        },
        DataType::Int64 => match ordered::<8>(words, register.byte_order) {
            Some(b) => integer(i64::from_be_bytes(b), register),
            None => return Reading::bad(),
        },
        DataType::Uint64 => match ordered::<8>(words, register.byte_order) {
            Some(b) => unsigned(u64::from_be_bytes(b), register),
            None => return Reading::bad(),
        },
        DataType::Float32 => match ordered::<4>(words, register.byte_order) {
            Some(b) => float(f64::from(f32::from_be_bytes(b)), register),
            None => return Reading::bad(),
        },
        DataType::Float64 => match ordered::<8>(words, register.byte_order) {
            Some(b) => float(f64::from_be_bytes(b), register),
            None => return Reading::bad(),
        },
        DataType::String => text(words, register.byte_order),
    };
    Reading {
        quality,
        value,
        raw,
    }
}

/// The value's bytes, most significant first, from registers sent in `order`. `None` unless
/// `words` holds exactly `N / 2` registers.
fn ordered<const N: usize>(words: &[u16], order: ByteOrder) -> Option<[u8; N]> {
    if words.len() * 2 != N {
        return None;
    }
    let reverse_words = matches!(order, ByteOrder::CDAB | ByteOrder::DCBA);
    let swap_bytes = matches!(order, ByteOrder::BADC | ByteOrder::DCBA);
    let mut bytes = [0u8; N];
    let mut chunks = bytes.chunks_exact_mut(2);
    let mut put = |word: u16| {
        let word = if swap_bytes { word.swap_bytes() } else { word };
        if let Some(chunk) = chunks.next() {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
    };
    if reverse_words {
        words.iter().rev().copied().for_each(&mut put);
    } else {
        words.iter().copied().for_each(&mut put);
    }
    Some(bytes)
}

fn is_identity(register: &ModbusRegister) -> bool {
    register.scale == 1.0 && register.offset == 0.0
}

fn scaled(raw: f64, register: &ModbusRegister) -> (Quality, Value) {
    float(raw, register)
}

#[allow(clippy::cast_precision_loss)] // scaling is a double operation by definition
fn integer(raw: i64, register: &ModbusRegister) -> (Quality, Value) {
    if is_identity(register) {
        (Quality::Good, Value::Int(raw))
    } else {
        scaled(raw as f64, register)
    }
}

#[allow(clippy::cast_precision_loss)] // scaling is a double operation by definition
fn unsigned(raw: u64, register: &ModbusRegister) -> (Quality, Value) {
    if is_identity(register) {
        (Quality::Good, Value::UInt(raw))
    } else {
        scaled(raw as f64, register)
    }
}

fn float(raw: f64, register: &ModbusRegister) -> (Quality, Value) {
    let value = if is_identity(register) {
        raw
    } else {
        raw * register.scale + register.offset
    };
    let quality = if value.is_finite() {
        Quality::Good
    } else {
        Quality::Uncertain
    };
    (quality, Value::Float(value))
}

fn text(words: &[u16], order: ByteOrder) -> (Quality, Value) {
    let low_first = matches!(order, ByteOrder::BADC | ByteOrder::DCBA);
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| {
            if low_first {
                w.to_le_bytes()
            } else {
                w.to_be_bytes()
            }
        })
        .take_while(|b| *b != 0)
        .collect();
    match String::from_utf8(bytes) {
        Ok(s) => (Quality::Good, Value::Str(s)),
        Err(e) => (
            Quality::Uncertain,
            Value::Str(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use iot_connector_config::RegisterKind;
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn register(data_type: DataType, byte_order: ByteOrder) -> ModbusRegister {
        ModbusRegister {
            name: "t".into(),
            unit_id: 1,
            kind: RegisterKind::Holding,
            address: 0,
            data_type,
            length: None,
            byte_order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            poll_interval_ms: None,
            deadband: None,
            heartbeat_ms: None,
        }
    }

    fn value(words: &[u16], data_type: DataType, order: ByteOrder) -> Value {
        let reading = decode_registers(words, &register(data_type, order));
        assert_ne!(reading.quality, Quality::Bad, "{data_type:?} {order:?}");
        reading.value
    }

    use ByteOrder::{ABCD, BADC, CDAB, DCBA};

    /// Known bit patterns, each written in all four orders.
    #[test]
    fn every_32_bit_type_decodes_in_every_byte_order() {
        let cases: &[(DataType, [u16; 2], Value)] = &[
            // 123.456f32 = 0x42F6E979, as verified against tokio-modbus's server.
            (
                DataType::Float32,
                [0x42F6, 0xE979],
                Value::Float(f64::from(123.456f32)),
            ),
            (DataType::Int32, [0xF8A4, 0x32EB], Value::Int(-123_456_789)),
            (
                DataType::Uint32,
                [0xB2D0, 0x5E00],
                Value::UInt(3_000_000_000),
            ),
            (DataType::Int32, [0xFFFF, 0xFFFF], Value::Int(-1)),
            (
                DataType::Uint32,
                [0xFFFF, 0xFFFF],
                Value::UInt(u64::from(u32::MAX)),
            ),
        ];
        for (data_type, [hi, lo], expected) in cases {
            let sent = |order| match order {
                ABCD => [*hi, *lo],
                CDAB => [*lo, *hi],
                BADC => [hi.swap_bytes(), lo.swap_bytes()],
                DCBA => [lo.swap_bytes(), hi.swap_bytes()],
            };
            for order in [ABCD, CDAB, BADC, DCBA] {
                assert_eq!(
                    value(&sent(order), *data_type, order),
                    *expected,
                    "{data_type:?} in {order:?}"
                );
            }
        }
    }

    #[test]
    fn the_research_register_map_decodes_as_verified() {
        // holding[0..8] as tokio-modbus read them from its own server, values verified then.
        let map = [
            0x42F6, 0xE979, 0xE979, 0x42F6, 0xF642, 0x79E9, 0x79E9, 0xF642,
        ];
        let f = Value::Float(f64::from(123.456f32));
        assert_eq!(value(&map[0..2], DataType::Float32, ABCD), f);
        assert_eq!(value(&map[2..4], DataType::Float32, CDAB), f);
        assert_eq!(value(&map[4..6], DataType::Float32, BADC), f);
        assert_eq!(value(&map[6..8], DataType::Float32, DCBA), f);
        // What a wrong order looks like: still a number, but not ours.
        assert_ne!(value(&map[0..2], DataType::Float32, CDAB), f);
    }

    #[test]
    fn every_64_bit_type_decodes_in_every_byte_order() {
        let cases: &[(DataType, u64, Value)] = &[
            (
                DataType::Uint64,
                0x1122_3344_5566_7788,
                Value::UInt(0x1122_3344_5566_7788),
            ),
            (
                DataType::Int64,
                (-9_876_543_210_i64).cast_unsigned(),
                Value::Int(-9_876_543_210),
            ),
            (DataType::Uint64, u64::MAX, Value::UInt(u64::MAX)),
            (
                DataType::Float64,
                (-9_876.543_210_123_45_f64).to_bits(),
                Value::Float(-9_876.543_210_123_45),
            ),
        ];
        for (data_type, bits, expected) in cases {
            let be = bits.to_be_bytes();
            let words: Vec<u16> = be
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            for order in [ABCD, CDAB, BADC, DCBA] {
                let mut sent = words.clone();
                if matches!(order, CDAB | DCBA) {
                    sent.reverse();
                }
                if matches!(order, BADC | DCBA) {
                    sent.iter_mut().for_each(|w| *w = w.swap_bytes());
                }
                assert_eq!(
                    value(&sent, *data_type, order),
                    *expected,
                    "{data_type:?} {order:?}"
                );
            }
        }
        // The documented example: 0x1122334455667788 in CDAB is 7788 5566 3344 1122.
        assert_eq!(
            value(&[0x7788, 0x5566, 0x3344, 0x1122], DataType::Uint64, CDAB),
            Value::UInt(0x1122_3344_5566_7788)
        );
        assert_eq!(
            value(&[0x8877, 0x6655, 0x4433, 0x2211], DataType::Uint64, DCBA),
            Value::UInt(0x1122_3344_5566_7788)
        );
        assert_eq!(
            value(&[0x2211, 0x4433, 0x6655, 0x8877], DataType::Uint64, BADC),
            Value::UInt(0x1122_3344_5566_7788)
        );
    }

    #[test]
    fn sixteen_bit_types_and_bool_decode() {
        assert_eq!(value(&[0xFFFE], DataType::Int16, ABCD), Value::Int(-2));
        assert_eq!(value(&[0xFFFE], DataType::Uint16, ABCD), Value::UInt(65534));
        // A single register has no word order; BADC/DCBA still swap its bytes.
        assert_eq!(
            value(&[0x3412], DataType::Uint16, CDAB),
            Value::UInt(0x3412)
        );
        assert_eq!(
            value(&[0x3412], DataType::Uint16, BADC),
            Value::UInt(0x1234)
        );
        assert_eq!(
            value(&[0x3412], DataType::Uint16, DCBA),
            Value::UInt(0x1234)
        );
        assert_eq!(value(&[0x0000], DataType::Bool, ABCD), Value::Bool(false));
        assert_eq!(value(&[0x0100], DataType::Bool, ABCD), Value::Bool(true));
        assert_eq!(decode_bit(true).value, Value::Bool(true));
        assert_eq!(decode_bit(true).raw, vec![1]);
        assert_eq!(decode_bit(false).raw, vec![0]);
    }

    #[test]
    fn scale_and_offset_apply_to_the_raw_number() {
        let mut reg = register(DataType::Uint32, CDAB);
        reg.scale = 0.01;
        reg.offset = -10.0;
        // 123456 = 0x0001E240, sent low word first.
        let reading = decode_registers(&[0xE240, 0x0001], &reg);
        let Value::Float(v) = reading.value else {
            panic!("{reading:?}")
        };
        assert!((v - 1224.56).abs() < 1e-9, "{v}");
        let mut reg = register(DataType::Int16, ABCD);
        reg.scale = 0.1;
        assert_eq!(
            decode_registers(&[0xFF9C], &reg).value,
            Value::Float(-100.0 * 0.1)
        );
        let mut reg = register(DataType::Float32, ABCD);
        reg.scale = 2.0;
        reg.offset = 1.0;
        assert_eq!(
            decode_registers(&[0x3FC0, 0x0000], &reg).value,
            Value::Float(1.5 * 2.0 + 1.0)
        );
    }

    #[test]
    fn strings_end_at_the_first_nul_in_either_byte_order() {
        let mut reg = register(DataType::String, ABCD);
        reg.length = Some(4);
        let words = [0x4142, 0x4344, 0x4500, 0x5858]; // "ABCDE\0XX"
        let reading = decode_registers(&words, &reg);
        assert_eq!(reading.value, Value::Str("ABCDE".into()));
        assert_eq!(reading.raw, b"ABCDE\0XX");
        reg.byte_order = BADC;
        let swapped = words.map(u16::swap_bytes);
        assert_eq!(
            decode_registers(&swapped, &reg).value,
            Value::Str("ABCDE".into())
        );
        reg.byte_order = DCBA;
        assert_eq!(
            decode_registers(&swapped, &reg).value,
            Value::Str("ABCDE".into())
        );
        reg.byte_order = CDAB;
        assert_eq!(
            decode_registers(&words, &reg).value,
            Value::Str("ABCDE".into())
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_uncertain_and_nan_is_uncertain() {
        let mut reg = register(DataType::String, ABCD);
        reg.length = Some(1);
        let reading = decode_registers(&[0xFF41], &reg);
        assert_eq!(reading.quality, Quality::Uncertain);
        assert_eq!(reading.value, Value::Str("\u{FFFD}A".into()));
        let reading = decode_registers(&[0x7FC0, 0x0000], &register(DataType::Float32, ABCD));
        assert_eq!(reading.quality, Quality::Uncertain);
    }

    #[test]
    fn raw_is_the_registers_as_read() {
        let reading = decode_registers(&[0xE979, 0x42F6], &register(DataType::Float32, CDAB));
        assert_eq!(reading.raw, vec![0xE9, 0x79, 0x42, 0xF6]);
    }

    #[test]
    fn a_wrong_number_of_registers_is_bad_not_a_panic() {
        for data_type in [
            DataType::Uint16,
            DataType::Float32,
            DataType::Float64,
            DataType::String,
        ] {
            let reg = register(data_type, DCBA);
            for n in [0usize, 3, 5, 200] {
                let words = vec![0xABCD; n];
                let reading = decode_registers(&words, &reg);
                let fits = n == usize::from(data_type.register_count(None)) && n > 0;
                assert_eq!(
                    reading.quality == Quality::Bad,
                    !fits,
                    "{data_type:?} × {n}"
                );
            }
        }
    }

    fn any_data_type() -> impl Strategy<Value = DataType> {
        prop_oneof![
            Just(DataType::Bool),
            Just(DataType::Int16),
            Just(DataType::Uint16),
            Just(DataType::Int32),
            Just(DataType::Uint32),
            Just(DataType::Int64),
            Just(DataType::Uint64),
            Just(DataType::Float32),
            Just(DataType::Float64),
            Just(DataType::String),
        ]
    }

    fn any_order() -> impl Strategy<Value = ByteOrder> {
        prop_oneof![Just(ABCD), Just(CDAB), Just(BADC), Just(DCBA)]
    }

    proptest! {
        #[test]
        fn any_registers_decode_without_panicking(
            words in proptest::collection::vec(any::<u16>(), 0..130),
            data_type in any_data_type(),
            order in any_order(),
            length in proptest::option::of(0u16..130),
            scale in any::<f64>(),
            offset in any::<f64>(),
        ) {
            let mut reg = register(data_type, order);
            reg.length = length;
            reg.scale = scale;
            reg.offset = offset;
            let reading = decode_registers(&words, &reg);
            if reading.quality != Quality::Bad {
                prop_assert_eq!(reading.raw.len(), words.len() * 2);
            }
        }
    }
}
