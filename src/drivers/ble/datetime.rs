//! Date Time (0x2A08), the 7-byte timestamp inside every health measurement (protocols.md §1.3),
//! and Current Time (0x2A2B) for the central's clock-trust check and clock setting.
//!
//! The fields are the device's local wall clock with no time zone. Year, month and day may be
//! 0, meaning "not known" (DT2, BP1); such a timestamp is kept (the central may log it) but
//! yields no usable device time. Any other out-of-range field, or a date that does not exist
//! (30 February), is a [`DecodeError::Malformed`] naming the field: a device that sends it
//! is faulty, and the whole value is refused rather than stamped with a guess.
//!
//! [`DateTime::device_time`] keeps the wall-clock digits and labels them UTC (+00:00), because
//! the true offset is unknown; ingest compares it with the gateway's receive time and corrects
//! it (see the `ble` module docs).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::wire::{expect_len, Wire};
use crate::drivers::DecodeError;

/// A decoded Date Time. Zero year, month or day means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hours: u8,
    pub minutes: u8,
    pub seconds: u8,
}

/// Decodes a whole Date Time characteristic value (exactly 7 bytes).
pub fn decode_date_time(buf: &[u8]) -> Result<DateTime, DecodeError> {
    expect_len(buf, 7)?;
    let mut w = Wire::new(buf);
    let dt = w.date_time()?;
    w.finish()?;
    Ok(dt)
}

fn out_of_range(field: &str, value: u32, range: &str) -> DecodeError {
    DecodeError::Malformed(format!("Date Time {field} {value} is outside {range}"))
}

impl DateTime {
    /// Decodes and validates the 7 wire bytes.
    pub fn from_bytes(b: [u8; 7]) -> Result<Self, DecodeError> {
        let [y0, y1, month, day, hours, minutes, seconds] = b;
        let year = u16::from_le_bytes([y0, y1]);
        if year != 0 && !(1582..=9999).contains(&year) {
            return Err(out_of_range(
                "year",
                year.into(),
                "1582..=9999 (0 = not known)",
            ));
        }
        if month > 12 {
            return Err(out_of_range(
                "month",
                month.into(),
                "1..=12 (0 = not known)",
            ));
        }
        if day > 31 {
            return Err(out_of_range("day", day.into(), "1..=31 (0 = not known)"));
        }
        if hours > 23 {
            return Err(out_of_range("hours", hours.into(), "0..=23"));
        }
        if minutes > 59 {
            return Err(out_of_range("minutes", minutes.into(), "0..=59"));
        }
        if seconds > 59 {
            return Err(out_of_range("seconds", seconds.into(), "0..=59"));
        }
        let dt = DateTime {
            year,
            month,
            day,
            hours,
            minutes,
            seconds,
        };
        if dt.date_known() && dt.to_primitive().is_none() {
            return Err(DecodeError::Malformed(format!(
                "Date Time {year:04}-{month:02}-{day:02} is not a calendar date"
            )));
        }
        Ok(dt)
    }

    /// Whether year, month and day are all known (non-zero).
    pub fn date_known(&self) -> bool {
        self.year != 0 && self.month != 0 && self.day != 0
    }

    /// The wall-clock date and time, when the date is fully known.
    pub fn to_primitive(&self) -> Option<PrimitiveDateTime> {
        if !self.date_known() {
            return None;
        }
        let month = Month::try_from(self.month).ok()?;
        let date = Date::from_calendar_date(i32::from(self.year), month, self.day).ok()?;
        let time = Time::from_hms(self.hours, self.minutes, self.seconds).ok()?;
        Some(PrimitiveDateTime::new(date, time))
    }

    /// The device time for a [`Reading`](crate::reading::Reading): the wall clock labelled
    /// +00:00 (offset unknown, corrected at ingest), or `None` when the date is not known.
    pub fn device_time(&self) -> Option<OffsetDateTime> {
        self.to_primitive().map(PrimitiveDateTime::assume_utc)
    }
}

/// Encodes a wall-clock time as the 7-byte Date Time, for setting a device clock (A&D devices
/// take a write to 0x2A08). `None` if the year is outside 1582..=9999.
pub fn encode_date_time(t: PrimitiveDateTime) -> Option<[u8; 7]> {
    let year = u16::try_from(t.year())
        .ok()
        .filter(|y| (1582..=9999).contains(y))?;
    let [y0, y1] = year.to_le_bytes();
    Some([
        y0,
        y1,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ])
}

/// Current Time (0x2A2B): Date Time, day of week, 1/256 s fractions, adjust reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentTime {
    pub date_time: DateTime,
    /// 1 = Monday … 7 = Sunday, 0 = unknown.
    pub day_of_week: u8,
    /// Fractions of a second in 1/256 s.
    pub fractions256: u8,
    /// Bit 0 manual update, 1 external reference, 2 time-zone change, 3 DST change.
    pub adjust_reason: u8,
}

/// Adjust reason "external reference time update", for a gateway setting a device clock.
pub const ADJUST_EXTERNAL_REFERENCE: u8 = 0x02;

/// Decodes a whole Current Time value (exactly 10 bytes), for the clock-trust check.
pub fn decode_current_time(buf: &[u8]) -> Result<CurrentTime, DecodeError> {
    expect_len(buf, 10)?;
    let mut w = Wire::new(buf);
    let date_time = w.date_time()?;
    let day_of_week = w.u8()?;
    if day_of_week > 7 {
        return Err(DecodeError::Malformed(format!(
            "Current Time day of week {day_of_week} is outside 1..=7 (0 = unknown)"
        )));
    }
    let fractions256 = w.u8()?;
    let adjust_reason = w.u8()?;
    w.finish()?;
    Ok(CurrentTime {
        date_time,
        day_of_week,
        fractions256,
        adjust_reason,
    })
}

/// Encodes a Current Time value for writing the device clock. `None` if the year is outside
/// 1582..=9999.
pub fn encode_current_time(t: PrimitiveDateTime, adjust_reason: u8) -> Option<[u8; 10]> {
    let [a, b, c, d, e, f, g] = encode_date_time(t)?;
    let fractions = (u64::from(t.nanosecond()) * 256 / 1_000_000_000) as u8;
    Some([
        a,
        b,
        c,
        d,
        e,
        f,
        g,
        t.weekday().number_from_monday(),
        fractions,
        adjust_reason,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn date_time_dt1_decodes_a_full_timestamp() {
        // protocols.md §1.3 vector DT1
        let dt = decode_date_time(&[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00]).unwrap();
        assert_eq!(dt.device_time(), Some(datetime!(2018-04-17 15:51:00 UTC)));
    }

    #[test]
    fn date_time_dt2_unknown_date_keeps_time_but_gives_no_device_time() {
        // protocols.md §1.3 vector DT2
        let dt = decode_date_time(&[0x00, 0x00, 0x00, 0x00, 0x12, 0x1A, 0x20]).unwrap();
        assert_eq!((dt.year, dt.month, dt.day), (0, 0, 0));
        assert_eq!((dt.hours, dt.minutes, dt.seconds), (18, 26, 32));
        assert!(!dt.date_known());
        assert_eq!(dt.device_time(), None);
    }

    #[test]
    fn date_time_dt3_six_bytes_is_too_short() {
        // protocols.md §1.3 vector DT3
        assert_eq!(
            decode_date_time(&[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33]),
            Err(DecodeError::TooShort { needed: 7, got: 6 })
        );
    }

    #[test]
    fn date_time_eight_bytes_is_trailing() {
        // protocols.md §1.3: the characteristic is exactly 7 bytes
        assert_eq!(
            decode_date_time(&[0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00, 0x00]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn date_time_only_year_unknown_gives_no_device_time() {
        // protocols.md §1.3: any 0 in Y/M/D means an untrusted clock (as in BP1)
        let dt = decode_date_time(&[0x00, 0x00, 0x04, 0x11, 0x14, 0x29, 0x3B]).unwrap();
        assert_eq!(dt.device_time(), None);
    }

    #[test]
    fn date_time_out_of_range_fields_are_malformed() {
        // protocols.md §1.3 field rules (XML date_time)
        let cases: [[u8; 7]; 7] = [
            [0x2D, 0x06, 1, 1, 0, 0, 0],  // year 1581
            [0x10, 0x27, 1, 1, 0, 0, 0],  // year 10000
            [0xE2, 0x07, 13, 1, 0, 0, 0], // month 13
            [0xE2, 0x07, 1, 32, 0, 0, 0], // day 32
            [0xE2, 0x07, 1, 1, 24, 0, 0], // hours 24
            [0xE2, 0x07, 1, 1, 0, 60, 0], // minutes 60
            [0xE2, 0x07, 1, 1, 0, 0, 60], // seconds 60 (no leap seconds in 0x2A08)
        ];
        for bytes in cases {
            assert!(
                matches!(DateTime::from_bytes(bytes), Err(DecodeError::Malformed(_))),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn date_time_nonexistent_calendar_date_is_malformed() {
        // 2019-02-29 (not a leap year) passes every per-field range and still is no date
        let e = DateTime::from_bytes([0xE3, 0x07, 2, 29, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("2019-02-29"), "{e}");
        assert!(DateTime::from_bytes([0xE4, 0x07, 2, 29, 0, 0, 0]).is_ok()); // 2020 is a leap year
    }

    #[test]
    fn date_time_boundaries_are_accepted() {
        // protocols.md §1.3: 1582..=9999
        assert!(DateTime::from_bytes([0x2E, 0x06, 1, 1, 0, 0, 0]).is_ok());
        assert!(DateTime::from_bytes([0x0F, 0x27, 12, 31, 23, 59, 59]).is_ok());
    }

    #[test]
    fn encode_date_time_inverts_dt1() {
        // protocols.md §1.3 vector DT1, written back for clock setting
        let t = datetime!(2018-04-17 15:51:00);
        assert_eq!(
            encode_date_time(t),
            Some([0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00])
        );
        assert_eq!(encode_date_time(datetime!(1500-01-01 00:00:00)), None);
    }

    #[test]
    fn current_time_round_trips_with_weekday_and_fractions() {
        // protocols.md §1.1 Current Time 0x2A2B; 2018-04-17 was a Tuesday; 0.5 s = 128/256
        let t = datetime!(2018-04-17 15:51:00.5);
        let bytes = encode_current_time(t, ADJUST_EXTERNAL_REFERENCE).unwrap();
        assert_eq!(
            bytes,
            [0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00, 2, 128, 0x02]
        );
        let ct = decode_current_time(&bytes).unwrap();
        assert_eq!(
            ct.date_time.to_primitive(),
            Some(datetime!(2018-04-17 15:51:00))
        );
        assert_eq!(
            (ct.day_of_week, ct.fractions256, ct.adjust_reason),
            (2, 128, 0x02)
        );
    }

    #[test]
    fn current_time_rejects_bad_weekday_and_length() {
        let mut bytes = [0xE2, 0x07, 0x04, 0x11, 0x0F, 0x33, 0x00, 8, 0, 0];
        assert!(matches!(
            decode_current_time(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        bytes[7] = 0;
        assert!(decode_current_time(&bytes).is_ok());
        assert_eq!(
            decode_current_time(&bytes[..9]),
            Err(DecodeError::TooShort { needed: 10, got: 9 })
        );
    }

    proptest! {
        #[test]
        fn date_time_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = decode_date_time(&bytes);
            let _ = decode_current_time(&bytes);
        }

        #[test]
        fn date_time_valid_dates_round_trip(days in 0i64..3_000_000, secs in 0i64..86_400) {
            // 1582-10-15 plus up to ~8200 years stays within 9999
            let t = time::macros::datetime!(1582-10-15 00:00:00)
                + time::Duration::days(days)
                + time::Duration::seconds(secs);
            if let Some(bytes) = encode_date_time(t) {
                prop_assert_eq!(DateTime::from_bytes(bytes).unwrap().to_primitive(), Some(t));
            }
        }
    }
}
