//! Observation templates: the bytes of a numeric reading's Observation with its per-reading
//! parts cut out, so that a backlog of readings from one device renders by copying bytes.
//!
//! Why: the publisher renders every reading at send time, and a drain of a device's backlog
//! renders thousands of Observations that differ only in their id, `effectiveDateTime` and
//! `valueQuantity.value`. Serializing the whole document for each one was the largest cost on
//! the publish path left after the static parts were cached (`doc::cached`).
//!
//! How the bytes are kept identical to [`super::observation_json`]:
//! - the template is cut from the serializer's own output for the same context and reading,
//!   with unique sentinels in place of the three per-reading parts, each of which must occur
//!   exactly as often as expected (the id twice, the others once);
//! - before a template is handed out, it renders the very reading it was made from, and the
//!   result must equal [`super::observation_json`]'s byte for byte; otherwise there is no
//!   template and the caller renders in full;
//! - [`Template::render`] declines (returns `None`) any reading whose Observation could have
//!   another shape: another metric or unit, flags (a `note`), a converted unit (a `note`), an
//!   absent or coded value. Only a plain number in the profile's own unit goes through.
//!
//! What decides the shape, and so must be the same for every reading a template serves: the
//! context apart from `effective` (gateway, device, display, NHS Number, setting), the metric
//! and the unit. Callers key their templates by exactly those (see `daemon::publish`).

use std::io::Write;

use serde_json::Number;
use time::OffsetDateTime;

use super::{
    build, fhir_date_time, observation_id, quantity_for, FhirError, ObservationContext,
    ObservationKey,
};
use crate::reading::{Metric, Reading, Unit, Value as RValue};

/// Stands in for the id (in `id` and in `identifier`). Control characters never occur in a
/// UUID, and serde_json escapes them, so the serialized sentinel cannot be confused with content.
const ID_SENTINEL: &str = "\u{1}vitalgate-template-id\u{1}";
/// Stands in for `effectiveDateTime`.
const TIME_SENTINEL: &str = "\u{1}vitalgate-template-time\u{1}";
/// Stands in for `valueQuantity.value`: a number no vital sign has, which must occur once.
const VALUE_SENTINEL: u64 = 18_446_744_073_709_539_271;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `bytes[start..end]` of the template.
    Fixed { start: usize, end: usize },
    /// The quoted id.
    Id,
    /// The quoted `effectiveDateTime`.
    Time,
    /// The JSON number of the value.
    Value,
}

/// A cut Observation for single numeric readings of one metric in one unit, under one context.
#[derive(Debug, Clone)]
pub struct Template {
    metric: Metric,
    unit: Unit,
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Template {
    /// The template for Observations shaped like `reading`'s under `ctx` (`ctx.effective` and
    /// the reading's value and time do not matter), or `None` when such Observations are not
    /// made from fixed bytes with an id, a time and a value alone. Errors are `reading`'s own
    /// rendering errors.
    pub fn for_reading(
        ctx: &ObservationContext,
        reading: &Reading,
    ) -> Result<Option<Template>, FhirError> {
        let (true, Some(unit)) = (Self::is_plain(reading), reading.unit) else {
            return Ok(None);
        };
        let shape_has_more_parts =
            matches!(reading.metric, Metric::SystolicBp | Metric::InspiredOxygen)
                || reading.metric.canonical_unit() != Some(unit);
        if shape_has_more_parts {
            return Ok(None);
        }
        let expected = super::observation_json(ctx, std::slice::from_ref(reading))?;
        let mut doc = build(ctx, std::slice::from_ref(reading))?;
        let Some(quantity) = doc.value_quantity.as_mut() else {
            return Ok(None);
        };
        quantity.value = Number::from(VALUE_SENTINEL);
        doc.id = ID_SENTINEL.to_owned();
        doc.identifier[0].value = ID_SENTINEL.into();
        doc.effective_date_time = TIME_SENTINEL.to_owned();
        if !doc.note.is_empty() || doc.data_absent_reason.is_some() {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| FhirError::Serialize(e.to_string()))?;
        let Some(pieces) = cut(&bytes) else {
            return Ok(None);
        };
        let template = Template {
            metric: reading.metric,
            unit,
            bytes,
            pieces,
        };
        match template.render(ctx.gateway_id, ctx.device_id, ctx.effective, reading)? {
            Some(made) if made == expected => Ok(Some(template)),
            _ => Ok(None),
        }
    }

    /// A number with a unit and no flags: the only kind of reading a template is made from or
    /// renders. For any other reading, `for_reading`'s `None` says nothing about its metric and
    /// unit, whose plain readings may well have a template.
    pub fn is_plain(reading: &Reading) -> bool {
        matches!(reading.value, RValue::Number(_))
            && reading.unit.is_some()
            && reading.flags.is_empty()
    }

    /// `reading`'s Observation, byte for byte what [`super::observation_json`] gives for the
    /// template's context with `effective`; `None` when `reading` is not of the template's
    /// shape (the caller then renders in full). `gateway` and `device` are the context's: they
    /// make the id.
    pub fn render(
        &self,
        gateway: &str,
        device: &str,
        effective: OffsetDateTime,
        reading: &Reading,
    ) -> Result<Option<Vec<u8>>, FhirError> {
        let (true, RValue::Number(value)) = (Self::is_plain(reading), reading.value) else {
            return Ok(None);
        };
        if reading.metric != self.metric || reading.unit != Some(self.unit) {
            return Ok(None);
        }
        reading.validate()?;
        let mut notes = Vec::new();
        let quantity = quantity_for(reading.metric, value, reading.unit, &mut notes)?;
        if !notes.is_empty() {
            return Ok(None);
        }
        let time = fhir_date_time(effective)?;
        let id = observation_id(
            gateway,
            device,
            ObservationKey::Metric(self.metric),
            effective,
        );
        let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = id.hyphenated().encode_lower(&mut id_buf);
        let mut out = Vec::with_capacity(self.bytes.len() + 2 * id.len() + time.len() + 32);
        for piece in &self.pieces {
            match *piece {
                Piece::Fixed { start, end } => out.extend_from_slice(&self.bytes[start..end]),
                Piece::Id => quoted(&mut out, id),
                Piece::Time => quoted(&mut out, &time),
                Piece::Value => serde_json::to_writer(&mut out, &quantity.value)
                    .map_err(|e| FhirError::Serialize(e.to_string()))?,
            }
        }
        Ok(Some(out))
    }
}

/// A UUID or an RFC 3339 time as a JSON string: neither holds a character JSON escapes.
fn quoted(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "\"{s}\"");
}

/// Splits the sentinel-bearing bytes into pieces; `None` unless the id occurs exactly twice
/// and the time and the value exactly once.
fn cut(bytes: &[u8]) -> Option<Vec<Piece>> {
    let needle = |s: &str| serde_json::to_vec(s).ok();
    let needles = [
        (needle(ID_SENTINEL)?, Piece::Id, 2),
        (needle(TIME_SENTINEL)?, Piece::Time, 1),
        (VALUE_SENTINEL.to_string().into_bytes(), Piece::Value, 1),
    ];
    let mut found: Vec<(usize, usize, Piece)> = Vec::new();
    for (needle, piece, count) in &needles {
        let at: Vec<usize> = bytes
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| w == needle)
            .map(|(i, _)| i)
            .collect();
        if at.len() != *count {
            return None;
        }
        found.extend(at.into_iter().map(|i| (i, i + needle.len(), *piece)));
    }
    found.sort_by_key(|(start, _, _)| *start);
    let mut pieces = Vec::new();
    let mut pos = 0;
    for (start, end, piece) in found {
        if start < pos {
            return None; // overlapping sentinels: cannot happen with these, but never guess
        }
        pieces.push(Piece::Fixed {
            start: pos,
            end: start,
        });
        pieces.push(piece);
        pos = end;
    }
    pieces.push(Piece::Fixed {
        start: pos,
        end: bytes.len(),
    });
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use time::UtcOffset;

    use super::*;
    use crate::fhir::RecordingSetting;
    use crate::nhs_number::NhsNumber;
    use crate::reading::{Absent, Decimal, Flag};

    fn nhs() -> NhsNumber {
        NhsNumber::parse("9000000009").unwrap() // clinical.md §3.3 PDS sandbox number
    }

    fn ctx<'a>(nhs: Option<&'a NhsNumber>, effective: OffsetDateTime) -> ObservationContext<'a> {
        ObservationContext {
            gateway_id: "hub-0001",
            device_id: "PO-123456",
            device_display: Some("Pulse oximeter \"PO\" 123456"),
            nhs_number: nhs,
            setting: RecordingSetting::Residential,
            effective,
        }
    }

    /// Metrics whose plain readings get a template: every numeric one but the BP panel and
    /// inspired oxygen (whose code depends on the value).
    fn templated_metrics() -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| {
                m.canonical_unit().is_some()
                    && !matches!(m, Metric::SystolicBp | Metric::InspiredOxygen)
            })
            .collect()
    }

    fn plain(metric: Metric, value: Decimal) -> Reading {
        Reading::canonical(metric, value)
    }

    /// `metric`'s plausible sample value, moved by `step` in its last digit.
    fn sample_moved(metric: Metric, step: i64) -> Reading {
        let mut r = crate::fhir::tests::sample(metric);
        if let RValue::Number(d) = &mut r.value {
            d.mantissa += step;
        }
        r
    }

    fn template(c: &ObservationContext, r: &Reading) -> Template {
        Template::for_reading(c, r)
            .unwrap()
            .unwrap_or_else(|| panic!("no template for {r:?}"))
    }

    #[test]
    fn every_numeric_metric_renders_from_its_template_as_observation_json_does() {
        let n = nhs();
        let made_at = datetime!(2025-06-20 09:15:00 +01:00);
        let times = [
            datetime!(2025-06-20 09:15:00 +01:00),
            datetime!(2026-01-01 00:00:00.123456789 UTC),
            datetime!(2024-02-29 23:59:59 -05:30),
        ];
        for metric in templated_metrics() {
            for nhs in [Some(&n), None] {
                let t = template(&ctx(nhs, made_at), &sample_moved(metric, 0));
                for (i, at) in times.into_iter().enumerate() {
                    let r = sample_moved(metric, i as i64 + 1);
                    let c = ctx(nhs, at);
                    let expected = super::super::observation_json(&c, std::slice::from_ref(&r));
                    let made = t.render(c.gateway_id, c.device_id, at, &r).unwrap();
                    assert_eq!(made, Some(expected.unwrap()), "{metric:?} at {at}");
                }
            }
        }
    }

    #[test]
    fn readings_of_another_shape_are_declined_for_a_full_render() {
        let n = nhs();
        let at = datetime!(2025-06-20 09:15:00 +01:00);
        let c = ctx(Some(&n), at);
        let t = template(&c, &plain(Metric::BodyTemperature, Decimal::new(376, -1)));
        let declined = [
            plain(Metric::BodyTemperature, Decimal::new(376, -1)).with_flags([Flag::Motion]),
            Reading::number(
                Metric::BodyTemperature,
                Decimal::new(998, -1),
                Unit::Fahrenheit,
            ),
            Reading::absent(Metric::BodyTemperature, Absent::Nan),
            plain(Metric::HeartRate, Decimal::int(72)),
        ];
        for r in &declined {
            assert_eq!(
                t.render("hub-0001", "PO-123456", at, r).unwrap(),
                None,
                "{r:?}"
            );
        }
    }

    #[test]
    fn shapes_with_per_reading_parts_get_no_template() {
        let n = nhs();
        let c = ctx(Some(&n), datetime!(2025-06-20 09:15:00 +01:00));
        let none = [
            plain(Metric::HeartRate, Decimal::int(72)).with_flags([Flag::Motion]),
            Reading::number(Metric::BodyWeight, Decimal::new(1596, -1), Unit::Pound),
            Reading::absent(Metric::HeartRate, Absent::Missing),
            plain(Metric::SystolicBp, Decimal::int(128)),
            plain(Metric::InspiredOxygen, Decimal::int(2)),
        ];
        for r in &none {
            assert!(Template::for_reading(&c, r).unwrap().is_none(), "{r:?}");
        }
    }

    /// Content that serializes like a sentinel must not be taken for one.
    #[test]
    fn a_device_name_holding_a_sentinel_gets_no_template_and_still_renders_in_full() {
        let n = nhs();
        let mut c = ctx(Some(&n), datetime!(2025-06-20 09:15:00 +01:00));
        c.device_display = Some(ID_SENTINEL);
        let r = plain(Metric::HeartRate, Decimal::int(72));
        assert!(Template::for_reading(&c, &r).unwrap().is_none());
        assert!(super::super::observation_json(&c, &[r]).is_ok());
    }

    #[test]
    fn an_invalid_reading_is_an_error_from_the_template_too() {
        let n = nhs();
        let at = datetime!(2025-06-20 09:15:00 +01:00);
        let c = ctx(Some(&n), at);
        let t = template(&c, &plain(Metric::HeartRate, Decimal::int(72)));
        let implausible = plain(Metric::HeartRate, Decimal::int(100_000));
        let full = super::super::observation_json(&c, std::slice::from_ref(&implausible));
        assert_eq!(
            t.render("hub-0001", "PO-123456", at, &implausible),
            full.map(Some)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A reading of `metric`: a plausible plain one, any number in any accepted unit,
        /// one with a flag, or an absent one.
        fn reading_of(metric: Metric) -> impl Strategy<Value = Reading> {
            (
                -50i64..50,
                any::<i64>(),
                -6i8..4,
                any::<prop::sample::Index>(),
                0u8..4,
            )
                .prop_map(move |(step, mantissa, exponent, unit, kind)| match kind {
                    0 => sample_moved(metric, step),
                    1 => Reading::number(
                        metric,
                        Decimal::new(mantissa, exponent),
                        *unit.get(metric.accepted_units()),
                    ),
                    2 => sample_moved(metric, step).with_flags([Flag::LowPerfusion]),
                    _ => Reading::absent(metric, Absent::Nres),
                })
        }

        fn templated_pair() -> impl Strategy<Value = (Reading, Reading)> {
            (proptest::sample::select(templated_metrics()), -3i64..=0).prop_flat_map(
                |(metric, step)| (Just(sample_moved(metric, step)), reading_of(metric)),
            )
        }

        fn any_time() -> impl Strategy<Value = OffsetDateTime> {
            (
                -2_000_000_000i64..4_000_000_000,
                0u32..1_000_000_000,
                -14i8..=14,
            )
                .prop_map(|(secs, nanos, hours)| {
                    OffsetDateTime::from_unix_timestamp(secs)
                        .unwrap()
                        .replace_nanosecond(nanos)
                        .unwrap()
                        .to_offset(UtcOffset::from_hms(hours, 0, 0).unwrap())
                })
        }

        proptest! {
            /// Whatever a template renders is `observation_json`'s output byte for byte, and a
            /// plain reading of the template's metric is always rendered from it.
            #[test]
            fn a_template_renders_observation_json_or_declines(
                (first, then) in templated_pair(),
                made_at in any_time(),
                at in any_time(),
                with_nhs in any::<bool>(),
            ) {
                let n = nhs();
                let nhs = with_nhs.then_some(&n);
                let t = template(&ctx(nhs, made_at), &first);
                let c = ctx(nhs, at);
                let full = super::super::super::observation_json(&c, std::slice::from_ref(&then));
                let plain = then.unit == first.unit
                    && then.flags.is_empty()
                    && matches!(then.value, RValue::Number(_));
                match t.render(c.gateway_id, c.device_id, at, &then) {
                    Ok(Some(bytes)) => prop_assert_eq!(Ok(bytes), full),
                    Ok(None) => prop_assert!(!plain, "declined a plain reading {:?}", then),
                    Err(e) => prop_assert_eq!(Err(e), full),
                }
            }
        }
    }
}
