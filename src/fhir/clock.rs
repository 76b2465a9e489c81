//! How an Observation says its time came from a hub clock that was not synchronised
//! (issue 15 point 5; a Raspberry Pi has no RTC).
//!
//! Decision: **`effectiveDateTime` corrected, and a `note`** that says so, valid on every UK
//! Core profile and read by clinicians (as the device flags' note is; clinical.md gives no
//! clock element and UK Core constrains none for this). The note starts with
//! [`HUB_CLOCK_NOTE`] so the platform can find it:
//! - **corrected**: received before sync, corrected from the boot clock once this boot
//!   synchronised: `effectiveDateTime` is the corrected time; the note gives the time the
//!   hub recorded and the correction;
//! - **unsynchronised**: no correction is known (the boot never synchronised, or the row is
//!   published before sync): `effectiveDateTime` is the hub's time, and the note says it may
//!   be wrong;
//! - a reading carrying the **device's own time** keeps it; the note says the hub's clock
//!   was not synchronised at receipt (a device clock corrected against the hub's may be off).
//!
//! The Observation's id stays the one of the recorded time: alerts and NEWS2 scores committed
//! with the reading reference it, and a redelivery gets the same id whatever was learnt since.

use time::OffsetDateTime;

use super::{build, doc, fhir_date_time, FhirError, ObservationContext};
use crate::reading::Reading;

/// Every clock note starts with this.
pub const HUB_CLOCK_NOTE: &str = "vitalgate hub clock:";

/// What is known of the hub clock for one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubClock {
    /// Synchronised at receipt: nothing to say (the plain Observation).
    Synced,
    /// Not synchronised at receipt and no correction known.
    Unsynchronised,
    /// Not synchronised at receipt; `corrected` is the receipt time from the boot clock.
    Corrected { corrected: OffsetDateTime },
    /// Not synchronised at receipt, but the effective time is the device's own.
    DeviceTime,
}

/// [`super::observation_json`] with what `clock` says: see the module docs.
pub fn observation_json_with_clock(
    ctx: &ObservationContext,
    readings: &[Reading],
    clock: HubClock,
) -> Result<Vec<u8>, FhirError> {
    let mut doc = build(ctx, readings)?;
    apply(&mut doc, ctx.effective, clock)?;
    let mut out = Vec::with_capacity(1792);
    serde_json::to_writer(&mut out, &doc).map_err(|e| FhirError::Serialize(e.to_string()))?;
    Ok(out)
}

/// [`super::observation`] with what `clock` says, as a `Value` (tests and validators).
pub fn observation_with_clock(
    ctx: &ObservationContext,
    readings: &[Reading],
    clock: HubClock,
) -> Result<serde_json::Value, FhirError> {
    let mut doc = build(ctx, readings)?;
    apply(&mut doc, ctx.effective, clock)?;
    super::to_value(&doc)
}

fn apply(
    doc: &mut doc::Observation,
    recorded: OffsetDateTime,
    clock: HubClock,
) -> Result<(), FhirError> {
    let text = match clock {
        HubClock::Synced => return Ok(()),
        HubClock::Unsynchronised => format!(
            "{HUB_CLOCK_NOTE} not synchronised when the gateway received this reading (no real-time clock, no network time yet) and no correction is known: effectiveDateTime is the gateway's unverified time"
        ),
        HubClock::DeviceTime => format!(
            "{HUB_CLOCK_NOTE} not synchronised when the gateway received this reading: effectiveDateTime is the device's own time"
        ),
        HubClock::Corrected { corrected } => {
            let corrected = corrected.to_offset(recorded.offset());
            doc.effective_date_time = fhir_date_time(corrected)?;
            let shift = (corrected - recorded).whole_seconds();
            format!(
                "{HUB_CLOCK_NOTE} not synchronised when the gateway received this reading; effectiveDateTime corrected by {shift:+} s from the gateway's boot clock once time synchronised (the gateway recorded {})",
                fhir_date_time(recorded)?
            )
        }
    };
    doc.note.push(doc::Note { text });
    Ok(())
}
