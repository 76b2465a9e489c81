//! HL7 v2 timestamps (`YYYYMMDDHHMM[SS[.S[S[S[S]]]]][+/-ZZZZ]`) to instants.
//!
//! A timestamp that carries its own offset is exact. Most bedside monitors send local wall
//! time without one, so the monitor's zone comes from `[hl7] timezone`: `Europe/London` (the
//! default: GMT in winter, BST from the last Sunday of March 01:00 UTC to the last Sunday of
//! October 01:00 UTC), `UTC`, or a fixed `+HH:MM`. The zone rules are written here, not taken
//! from a tz database crate, because an NHS ward gateway needs exactly this one and the rule
//! has been fixed in law since 1996.
//!
//! In the October hour that happens twice, a local time is read as the first (BST) one; in
//! the March hour that never happens, as GMT. A timestamp with less than minute precision
//! is refused: a vital sign is no use to NEWS2 without its minute.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

/// The zone a monitor's local timestamps are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorZone {
    /// GMT/BST by the UK rule.
    EuropeLondon,
    /// A fixed offset (`UTC` is `+00:00`).
    Fixed(UtcOffset),
}

impl MonitorZone {
    /// Parses the config value: `Europe/London`, `UTC`, or `+HH:MM` / `-HH:MM`.
    pub fn parse(s: &str) -> Result<MonitorZone, String> {
        match s {
            "Europe/London" => return Ok(MonitorZone::EuropeLondon),
            "UTC" | "Z" => return Ok(MonitorZone::Fixed(UtcOffset::UTC)),
            _ => {}
        }
        let bad = || {
            format!("{s:?}: use \"Europe/London\", \"UTC\" or a fixed offset such as \"+01:00\"")
        };
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1i8, &s[1..]),
            Some(b'-') => (-1i8, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        if h > 14 || m > 59 {
            return Err(bad());
        }
        UtcOffset::from_hms(sign * h, sign * m, 0)
            .map(MonitorZone::Fixed)
            .map_err(|_| bad())
    }

    /// The offset in force at local wall time `local`.
    pub fn offset_at_local(self, local: PrimitiveDateTime) -> UtcOffset {
        match self {
            MonitorZone::Fixed(o) => o,
            MonitorZone::EuropeLondon => {
                // Try BST first: if local-1h is inside the BST period (in UTC), it is BST.
                let bst = UtcOffset::from_hms(1, 0, 0).unwrap_or(UtcOffset::UTC);
                let as_bst = local.assume_offset(bst).to_offset(UtcOffset::UTC);
                if london_is_bst(as_bst) {
                    bst
                } else {
                    UtcOffset::UTC
                }
            }
        }
    }

    /// The offset in force at instant `at` (for writing local timestamps, e.g. the ACK's).
    pub fn offset_at(self, at: OffsetDateTime) -> UtcOffset {
        match self {
            MonitorZone::Fixed(o) => o,
            MonitorZone::EuropeLondon => {
                if london_is_bst(at.to_offset(UtcOffset::UTC)) {
                    UtcOffset::from_hms(1, 0, 0).unwrap_or(UtcOffset::UTC)
                } else {
                    UtcOffset::UTC
                }
            }
        }
    }
}

/// The last Sunday of `month` in `year`, at 01:00 UTC.
fn last_sunday_0100_utc(year: i32, month: Month) -> Option<OffsetDateTime> {
    let last_day = time::util::days_in_month(month, year);
    let mut d = Date::from_calendar_date(year, month, last_day).ok()?;
    while d.weekday() != Weekday::Sunday {
        d = d.previous_day()?;
    }
    Some(PrimitiveDateTime::new(d, Time::from_hms(1, 0, 0).ok()?).assume_utc())
}

fn london_is_bst(utc: OffsetDateTime) -> bool {
    let y = utc.year();
    match (
        last_sunday_0100_utc(y, Month::March),
        last_sunday_0100_utc(y, Month::October),
    ) {
        (Some(start), Some(end)) => utc >= start && utc < end,
        _ => false,
    }
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("{0:?} is not an HL7 timestamp (YYYYMMDDHHMM[SS][+ZZZZ])")]
    Syntax(String),
    #[error("{0:?} has no minute; a reading needs at least minute precision")]
    Imprecise(String),
    #[error("{0:?} is not a real date and time")]
    Invalid(String),
}

/// Parses an HL7 TS/DTM value; local times are read in `zone`.
pub fn parse_timestamp(s: &str, zone: MonitorZone) -> Result<OffsetDateTime, TimestampError> {
    let owned = || s.chars().take(40).collect::<String>();
    let ts = hl7_parser::datetime::parse_timestamp(s, false)
        .map_err(|_| TimestampError::Syntax(owned()))?;
    let (Some(month), Some(day), Some(hour), Some(minute)) = (ts.month, ts.day, ts.hour, ts.minute)
    else {
        return Err(TimestampError::Imprecise(owned()));
    };
    let invalid = |_| TimestampError::Invalid(owned());
    let month = Month::try_from(month).map_err(|_| TimestampError::Invalid(owned()))?;
    let date = Date::from_calendar_date(i32::from(ts.year), month, day).map_err(invalid)?;
    let time = Time::from_hms_micro(
        hour,
        minute,
        ts.second.unwrap_or(0),
        ts.microsecond.unwrap_or(0),
    )
    .map_err(invalid)?;
    let local = PrimitiveDateTime::new(date, time);
    let offset = match ts.offset {
        Some(o) => {
            let minutes = i8::try_from(o.minutes).map_err(|_| TimestampError::Invalid(owned()))?;
            let minutes = if o.hours < 0 { -minutes } else { minutes };
            UtcOffset::from_hms(o.hours, minutes, 0).map_err(invalid)?
        }
        None => zone.offset_at_local(local),
    };
    Ok(local.assume_offset(offset))
}

/// Formats an instant as an HL7 timestamp in `zone`'s local time, without an offset (as the
/// monitors send theirs), e.g. for the ACK's MSH-7.
pub fn format_timestamp(at: OffsetDateTime, zone: MonitorZone) -> String {
    let t = at.to_offset(zone.offset_at(at));
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_winter_local_time_in_london_is_gmt() {
        let t = parse_timestamp("20200212125008", MonitorZone::EuropeLondon).unwrap();
        assert_eq!(t, datetime!(2020-02-12 12:50:08 UTC));
    }

    #[test]
    fn a_summer_local_time_in_london_is_bst() {
        let t = parse_timestamp("20260701120000", MonitorZone::EuropeLondon).unwrap();
        assert_eq!(t, datetime!(2026-07-01 11:00:00 UTC));
    }

    #[test]
    fn the_clock_change_days_switch_at_0100_utc() {
        // 2026: BST from Sunday 29 March 01:00 UTC to Sunday 25 October 01:00 UTC.
        let z = MonitorZone::EuropeLondon;
        assert_eq!(
            parse_timestamp("202603290059", z).unwrap(),
            datetime!(2026-03-29 00:59 UTC)
        );
        assert_eq!(
            parse_timestamp("202603290200", z).unwrap(),
            datetime!(2026-03-29 01:00 UTC)
        );
        // 01:30 local on 25 October happens twice: read as the first (BST) one.
        assert_eq!(
            parse_timestamp("202610250130", z).unwrap(),
            datetime!(2026-10-25 00:30 UTC)
        );
        assert_eq!(
            parse_timestamp("202610250230", z).unwrap(),
            datetime!(2026-10-25 02:30 UTC)
        );
    }

    #[test]
    fn an_explicit_offset_wins_over_the_configured_zone() {
        let t = parse_timestamp("20230312195905.1234-0700", MonitorZone::EuropeLondon).unwrap();
        assert_eq!(t, datetime!(2023-03-13 02:59:05.1234 UTC));
        let t = parse_timestamp("202307011200+0530", MonitorZone::EuropeLondon).unwrap();
        assert_eq!(t, datetime!(2023-07-01 06:30 UTC));
    }

    #[test]
    fn a_fixed_zone_applies_all_year() {
        let z = MonitorZone::parse("+02:00").unwrap();
        assert_eq!(
            parse_timestamp("20260701120000", z).unwrap(),
            datetime!(2026-07-01 10:00 UTC)
        );
    }

    #[test]
    fn timestamps_without_a_minute_or_not_real_are_refused() {
        let z = MonitorZone::EuropeLondon;
        assert!(matches!(
            parse_timestamp("20200212", z),
            Err(TimestampError::Imprecise(_))
        ));
        assert!(matches!(
            parse_timestamp("20200231120000", z),
            Err(TimestampError::Invalid(_))
        ));
        assert!(matches!(
            parse_timestamp("2020021212x", z),
            Err(TimestampError::Syntax(_))
        ));
        assert!(matches!(
            parse_timestamp("20200212129900", z),
            Err(TimestampError::Invalid(_))
        ));
        assert!(parse_timestamp("202002121200+9999", z).is_err());
    }

    #[test]
    fn zone_config_values_are_checked() {
        assert_eq!(
            MonitorZone::parse("UTC"),
            Ok(MonitorZone::Fixed(UtcOffset::UTC))
        );
        assert!(MonitorZone::parse("Europe/Paris").is_err());
        assert!(MonitorZone::parse("+1:00").is_err());
        assert!(MonitorZone::parse("+15:00").is_err());
    }

    #[test]
    fn ack_timestamps_are_local_wall_time() {
        let at = datetime!(2026-07-01 11:00:05 UTC);
        assert_eq!(
            format_timestamp(at, MonitorZone::EuropeLondon),
            "20260701120005"
        );
        assert_eq!(
            format_timestamp(
                datetime!(2020-02-12 12:55:42 UTC),
                MonitorZone::EuropeLondon
            ),
            "20200212125542"
        );
    }
}
