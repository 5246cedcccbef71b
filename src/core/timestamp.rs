//! Timestamps in stored and sent JSON, as chrono writes them (RFC 3339 in UTC with a `Z`, and
//! 0, 3, 6 or 9 digits of fraction), but written and read without chrono's formatting
//! machinery.
//!
//! Why: every run is written with its timestamps several times (its record at each change,
//! each event, the API's answer, the webhook's body) and read back as often. Under callgrind,
//! chrono's `Display`-based writer took about 2,500 instructions per timestamp and its parser
//! about 1,300: a tenth of all the instructions a run cost. This writes the common shape
//! straight into a buffer, reads it straight from the bytes, and leaves everything else
//! (years outside 0..=9999, leap seconds, other offsets) to chrono. A property test holds both
//! directions to chrono's own results.
//!
//! Use with `#[serde(with = "crate::core::timestamp")]`, or `timestamp::option` for an
//! `Option`.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: the longest fast-path shape.
const LONGEST: usize = 30;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; LONGEST];
    match write(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => at.serialize(serializer),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Visitor)
}

/// The same, for an optional timestamp (`null` when absent).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] DateTime<Utc>);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(at)| at))
    }
}

/// Writes `at` as chrono would, or `None` when it is not of the common shape.
fn write<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; LONGEST]) -> Option<&'b str> {
    let year = at.year();
    let nanos = at.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let fields = [
        (year as u32 / 100, 0),
        (year as u32 % 100, 2),
        (at.month(), 5),
        (at.day(), 8),
        (at.hour(), 11),
        (at.minute(), 14),
        (at.second(), 17),
    ];
    buffer[..19].copy_from_slice(b"0000-00-00T00:00:00");
    for (value, at) in fields {
        buffer[at] = b'0' + (value / 10) as u8;
        buffer[at + 1] = b'0' + (value % 10) as u8;
    }
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut end = 19;
    if digits > 0 {
        buffer[19] = b'.';
        let mut rest = fraction;
        for i in (20..20 + digits).rev() {
            buffer[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        end = 20 + digits;
    }
    buffer[end] = b'Z';
    std::str::from_utf8(&buffer[..=end]).ok()
}

/// Reads the common shape; anything else is `None`, for chrono to read or refuse.
fn read(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || *bytes.last()? != b'Z' {
        return None;
    }
    let shape_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !shape_ok {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes[range].iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let nanos = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let value = number(20..bytes.len() - 1)?;
            value * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    // chrono refuses second 60 here (a leap second), so that is left to its parser too.
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time = (number(11..13)?, number(14..16)?, number(17..19)?);
    Some(
        date.and_hms_nano_opt(time.0, time.1, time.2, nanos)?
            .and_utc(),
    )
}

struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        match read(text) {
            Some(at) => Ok(at),
            None => text
                .parse::<DateTime<chrono::FixedOffset>>()
                .map(|at| at.with_timezone(&Utc))
                .map_err(E::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Fast(#[serde(with = "super")] DateTime<Utc>);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Chrono(DateTime<Utc>);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct FastOption(#[serde(with = "super::option")] Option<DateTime<Utc>>);

    /// Timestamps over chrono's whole range, with fractions of each length, leap seconds and
    /// whole seconds among them.
    fn any_timestamp() -> impl Strategy<Value = DateTime<Utc>> {
        let seconds = prop_oneof![
            -62_000_000_000i64..253_402_300_800,
            -8_000_000_000_000i64..8_000_000_000_000,
        ];
        let nanos = prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|n| n * 1_000_000),
            (0u32..1_000_000).prop_map(|n| n * 1000),
            0u32..1_000_000_000,
            1_000_000_000u32..2_000_000_000,
        ];
        (seconds, nanos).prop_filter_map("in chrono's range", |(s, n)| {
            let at = DateTime::from_timestamp(s, n % 1_000_000_000)?;
            // A leap second: chrono keeps it as 59 s plus more than a second of nanos.
            if n >= 1_000_000_000 {
                let naive = at.naive_utc();
                let leap = naive
                    .date()
                    .and_hms_nano_opt(naive.hour(), naive.minute(), 59, n)?;
                return Some(leap.and_utc());
            }
            Some(at)
        })
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes_and_reads_it_back(at in any_timestamp()) {
            let ours = serde_json::to_string(&Fast(at)).unwrap();
            prop_assert_eq!(&ours, &serde_json::to_string(&Chrono(at)).unwrap());
            prop_assert_eq!(serde_json::from_str::<Fast>(&ours).unwrap(), Fast(at));
        }

        #[test]
        fn reads_any_text_as_chrono_does(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?(Z|z|\\+01:00|)") {
            let json = serde_json::to_string(&text).unwrap();
            let ours = serde_json::from_str::<Fast>(&json).map(|f| f.0).ok();
            let chrono = serde_json::from_str::<Chrono>(&json).map(|c| c.0).ok();
            prop_assert_eq!(ours, chrono);
        }
    }

    #[test]
    fn options_are_null_or_a_timestamp() {
        let at = DateTime::from_timestamp(1_764_094_494, 123_000_000).unwrap();
        assert_eq!(
            serde_json::to_string(&FastOption(Some(at))).unwrap(),
            r#""2025-11-25T18:14:54.123Z""#
        );
        assert_eq!(serde_json::to_string(&FastOption(None)).unwrap(), "null");
        assert_eq!(
            serde_json::from_str::<FastOption>("null").unwrap(),
            FastOption(None)
        );
        assert_eq!(
            serde_json::from_str::<FastOption>(r#""2025-11-25T18:14:54.123Z""#).unwrap(),
            FastOption(Some(at))
        );
    }

    #[test]
    fn refuses_what_chrono_refuses_naming_the_format() {
        let error = serde_json::from_str::<Fast>(r#""2025-13-25T18:14:54Z""#).unwrap_err();
        assert!(error.to_string().contains("out of range"), "{error}");
        let error = serde_json::from_str::<Fast>("42").unwrap_err();
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }
}
