//! Timestamps found in payloads, to µs since the epoch (UTC).

/// Earliest and latest accepted instants (years 1900 to 9999): anything else is a unit mix-up
/// or garbage, and a row with a year-50000 event time helps nobody.
const MIN_US: i64 = -2_208_988_800_000_000;
const MAX_US: i64 = 253_402_300_799_999_999;

/// A number of seconds, milliseconds, microseconds or nanoseconds since the epoch, told apart by
/// magnitude: below 10^11 it is seconds (10^11 s is the year 5138), below 10^14 milliseconds,
/// below 10^17 microseconds, else nanoseconds. Fractions are kept down to the microsecond.
pub fn epoch_number_to_us(number: f64) -> Result<i64, String> {
    if !number.is_finite() {
        return Err(format!("{number} is not a timestamp"));
    }
    let magnitude = number.abs();
    let us = if magnitude < 1e11 {
        number * 1e6
    } else if magnitude < 1e14 {
        number * 1e3
    } else if magnitude < 1e17 {
        number
    } else {
        number / 1e3
    };
    in_range(us.round(), number)
}

#[allow(clippy::cast_possible_truncation)] // checked against the i64 range just before
fn in_range(us: f64, original: f64) -> Result<i64, String> {
    if us < MIN_US as f64 || us > MAX_US as f64 {
        return Err(format!(
            "{original} is outside the years 1900 to 9999 in every unit"
        ));
    }
    Ok(us as i64)
}

/// An RFC 3339 timestamp (`2024-05-01T12:00:00.5Z`, `2024-05-01 12:00:00+02:00`; `T`/`Z` in
/// either case) to µs since the epoch.
pub fn rfc3339_to_us(text: &str) -> Result<i64, String> {
    parse_rfc3339(text.trim().as_bytes())
        .ok_or_else(|| format!("{text:?} is neither a number nor an RFC 3339 timestamp"))
}

fn parse_rfc3339(b: &[u8]) -> Option<i64> {
    let mut p = Parser { b, at: 0 };
    let year = p.digits(4)?;
    p.expect(b'-')?;
    let month = p.digits(2)?;
    p.expect(b'-')?;
    let day = p.digits(2)?;
    match p.next()? {
        b'T' | b't' | b' ' => {}
        _ => return None,
    }
    let hour = p.digits(2)?;
    p.expect(b':')?;
    let minute = p.digits(2)?;
    p.expect(b':')?;
    let second = p.digits(2)?;
    let mut micros = 0i64;
    if p.peek() == Some(b'.') {
        p.at += 1;
        let mut scale = 100_000i64;
        let start = p.at;
        while let Some(d) = p.peek().filter(u8::is_ascii_digit) {
            micros += i64::from(d - b'0') * scale;
            scale /= 10;
            p.at += 1;
        }
        if p.at == start {
            return None;
        }
    }
    let offset_s = match p.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let hours = p.digits(2)?;
            p.expect(b':')?;
            let minutes = p.digits(2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    if p.at != b.len()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60 is a leap second; it is counted as the next second's first instant.
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let us = seconds.checked_mul(1_000_000)?.checked_add(micros)?;
    (MIN_US..=MAX_US).contains(&us).then_some(us)
}

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn digits(&mut self, n: usize) -> Option<i64> {
        let mut value = 0i64;
        for _ in 0..n {
            let d = self.next().filter(u8::is_ascii_digit)?;
            value = value * 10 + i64::from(d - b'0');
        }
        Some(value)
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_in_the_unit_their_size_implies() {
        assert_eq!(
            epoch_number_to_us(1_700_000_000.0),
            Ok(1_700_000_000_000_000)
        );
        assert_eq!(
            epoch_number_to_us(1_700_000_000.25),
            Ok(1_700_000_000_250_000)
        );
        assert_eq!(
            epoch_number_to_us(1_700_000_000_123.0),
            Ok(1_700_000_000_123_000)
        );
        assert_eq!(
            epoch_number_to_us(1_700_000_000_123_456.0),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(
            epoch_number_to_us(1_700_000_000_123_456_789.0),
            Ok(1_700_000_000_123_457)
        );
        assert_eq!(epoch_number_to_us(0.0), Ok(0));
        assert!(epoch_number_to_us(f64::NAN).is_err());
        assert!(epoch_number_to_us(-1e30).is_err());
    }

    #[test]
    fn rfc3339_timestamps_with_fractions_and_offsets() {
        assert_eq!(rfc3339_to_us("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            rfc3339_to_us("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000_000)
        );
        assert_eq!(
            rfc3339_to_us("2023-11-14T23:13:20.123456789+01:00"),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(
            rfc3339_to_us("2023-11-14 22:13:20.5z"),
            Ok(1_700_000_000_500_000)
        );
        assert_eq!(
            rfc3339_to_us("2024-02-29T00:00:00-00:30"),
            Ok(1_709_166_600_000_000)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-02-30T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20Zjunk",
            "２023-11-14T22:13:20Z",
        ] {
            assert!(rfc3339_to_us(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn days_from_civil_matches_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
