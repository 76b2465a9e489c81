//! The MDC (ISO/IEEE 11073-10101) and Philips MDIL codes vitalgate turns into readings, and
//! their units (protocols.md §3.2).
//!
//! An MDC code is `partition × 65536 + term code`; Philips MDIL writes the same two numbers as
//! `PPPP-TTTT` in hex, so both map through one table of MDC numbers. Codes that are known but
//! have no vitalgate metric (invasive arterial pressure, perfusion index from a ward monitor is
//! kept) are reported as such, never guessed into a neighbouring metric.

use crate::reading::{Metric, Unit};

/// What an OBX-3 code means to vitalgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMeaning {
    /// A metric vitalgate stores.
    Metric(Metric),
    /// A known measurement without a vitalgate metric (kept out of the outbox, counted).
    Unsupported(&'static str),
}

/// MDC numeric codes (SCADA partition 2) by their value.
const METRICS: &[(u32, CodeMeaning)] = &[
    (150456, CodeMeaning::Metric(Metric::Spo2)), // MDC_PULS_OXIM_SAT_O2
    (149530, CodeMeaning::Metric(Metric::PulseRate)), // MDC_PULS_OXIM_PULS_RATE
    (149514, CodeMeaning::Metric(Metric::PulseRate)), // MDC_PULS_RATE (Philips "Pulse")
    (147842, CodeMeaning::Metric(Metric::HeartRate)), // MDC_ECG_HEART_RATE
    (150488, CodeMeaning::Metric(Metric::PerfusionIndex)), // MDC_BLD_PERF_INDEX
    (150301, CodeMeaning::Metric(Metric::SystolicBp)), // MDC_PRESS_CUFF_SYS
    (150302, CodeMeaning::Metric(Metric::DiastolicBp)), // MDC_PRESS_CUFF_DIA
    (150303, CodeMeaning::Metric(Metric::MeanBp)), // MDC_PRESS_CUFF_MEAN
    (150021, CodeMeaning::Metric(Metric::SystolicBp)), // MDC_PRESS_BLD_NONINV_SYS
    (150022, CodeMeaning::Metric(Metric::DiastolicBp)), // MDC_PRESS_BLD_NONINV_DIA
    (150023, CodeMeaning::Metric(Metric::MeanBp)), // MDC_PRESS_BLD_NONINV_MEAN
    (151562, CodeMeaning::Metric(Metric::RespiratoryRate)), // MDC_RESP_RATE
    (150344, CodeMeaning::Metric(Metric::BodyTemperature)), // MDC_TEMP
    (150364, CodeMeaning::Metric(Metric::BodyTemperature)), // MDC_TEMP_BODY
    (
        150033,
        CodeMeaning::Unsupported("invasive arterial systolic pressure"),
    ),
    (
        150034,
        CodeMeaning::Unsupported("invasive arterial diastolic pressure"),
    ),
    (
        150035,
        CodeMeaning::Unsupported("invasive arterial mean pressure"),
    ),
];

/// MDC dimension codes (partition 4) to UCUM.
const UNITS: &[(u32, Unit)] = &[
    (262688, Unit::Percent),    // MDC_DIM_PERCENT
    (264864, Unit::PerMinute),  // MDC_DIM_BEAT_PER_MIN
    (264928, Unit::PerMinute),  // MDC_DIM_RESP_PER_MIN
    (266016, Unit::MmHg),       // MDC_DIM_MMHG
    (268192, Unit::Celsius),    // MDC_DIM_DEGC
    (266048, Unit::KiloPascal), // MDC_DIM_KILO_PASCAL
    (266560, Unit::Fahrenheit), // MDC_DIM_FAHR
];

/// An OBX-3 / OBX-6 coded element: identifier and coding system (CWE components 1 and 3).
/// Returns the MDC number for `MDC` and `MDIL` codes, `None` for any other system or an
/// identifier that is not a well-formed code of that system.
pub fn mdc_number(identifier: &str, system: &str) -> Option<u32> {
    match system {
        "MDC" => identifier.parse::<u32>().ok(),
        "MDIL" => {
            let (partition, term) = identifier.split_once('-')?;
            if partition.len() != 4 || term.len() != 4 {
                return None;
            }
            let p = u32::from_str_radix(partition, 16).ok()?;
            let t = u32::from_str_radix(term, 16).ok()?;
            Some(p * 65536 + t)
        }
        _ => None,
    }
}

/// The meaning of an MDC number, if vitalgate knows it. Vendor-private terms (term code
/// >= 0xF000) are never known.
pub fn meaning(mdc: u32) -> Option<CodeMeaning> {
    if mdc % 65536 >= 0xF000 {
        return None;
    }
    METRICS.iter().find(|(c, _)| *c == mdc).map(|(_, m)| *m)
}

/// The UCUM unit of an MDC dimension number.
pub fn unit(mdc: u32) -> Option<Unit> {
    UNITS.iter().find(|(c, _)| *c == mdc).map(|(_, u)| *u)
}

/// The MDC number vitalgate's simulator sends for a metric (the inverse of [`meaning`] for
/// the codes GE and Mindray use).
pub fn code_for(metric: Metric) -> Option<(u32, &'static str)> {
    Some(match metric {
        Metric::Spo2 => (150456, "MDC_PULS_OXIM_SAT_O2"),
        Metric::PulseRate => (149530, "MDC_PULS_OXIM_PULS_RATE"),
        Metric::HeartRate => (147842, "MDC_ECG_HEART_RATE"),
        Metric::PerfusionIndex => (150488, "MDC_BLD_PERF_INDEX"),
        Metric::SystolicBp => (150301, "MDC_PRESS_CUFF_SYS"),
        Metric::DiastolicBp => (150302, "MDC_PRESS_CUFF_DIA"),
        Metric::MeanBp => (150303, "MDC_PRESS_CUFF_MEAN"),
        Metric::RespiratoryRate => (151562, "MDC_RESP_RATE"),
        Metric::BodyTemperature => (150344, "MDC_TEMP"),
        _ => return None,
    })
}

/// The MDC dimension vitalgate's simulator sends for a unit.
pub fn unit_code_for(metric: Metric) -> Option<(u32, &'static str)> {
    Some(match metric {
        Metric::Spo2 | Metric::PerfusionIndex => (262688, "MDC_DIM_PERCENT"),
        Metric::PulseRate | Metric::HeartRate => (264864, "MDC_DIM_BEAT_PER_MIN"),
        Metric::RespiratoryRate => (264928, "MDC_DIM_RESP_PER_MIN"),
        Metric::SystolicBp | Metric::DiastolicBp | Metric::MeanBp => (266016, "MDC_DIM_MMHG"),
        Metric::BodyTemperature => (268192, "MDC_DIM_DEGC"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// protocols.md §3.2: the Philips MDIL codes map to MDC by partition × 65536 + term.
    #[test]
    fn philips_mdil_codes_map_to_the_mdc_numbers() {
        assert_eq!(mdc_number("0002-4bb8", "MDIL"), Some(150456));
        assert_eq!(mdc_number("0002-4182", "MDIL"), Some(147842));
        assert_eq!(mdc_number("0002-480a", "MDIL"), Some(149514));
        assert_eq!(mdc_number("0002-4a05", "MDIL"), Some(150021));
        assert_eq!(mdc_number("0004-0220", "MDIL"), Some(262688));
        assert_eq!(mdc_number("0004-0aa0", "MDIL"), Some(264864));
        assert_eq!(mdc_number("0004-0f20", "MDIL"), Some(266016));
        assert_eq!(mdc_number("0004-0ae0", "MDIL"), Some(264928));
    }

    #[test]
    fn mdil_spo2_heart_rate_pulse_and_nbp_systolic_are_vitalgate_metrics() {
        let m = |id| meaning(mdc_number(id, "MDIL").unwrap());
        assert_eq!(m("0002-4bb8"), Some(CodeMeaning::Metric(Metric::Spo2)));
        assert_eq!(m("0002-4182"), Some(CodeMeaning::Metric(Metric::HeartRate)));
        assert_eq!(m("0002-480a"), Some(CodeMeaning::Metric(Metric::PulseRate)));
        assert_eq!(
            m("0002-4a05"),
            Some(CodeMeaning::Metric(Metric::SystolicBp))
        );
    }

    #[test]
    fn vendor_private_terms_are_never_known() {
        assert_eq!(meaning(mdc_number("0002-f0c7", "MDIL").unwrap()), None);
    }

    #[test]
    fn other_coding_systems_and_malformed_mdil_give_no_number() {
        assert_eq!(mdc_number("8867-4", "LN"), None);
        assert_eq!(mdc_number("02-4182", "MDIL"), None);
        assert_eq!(mdc_number("zz", "MDC"), None);
    }

    #[test]
    fn every_simulator_code_decodes_back_to_its_metric_and_unit() {
        for m in Metric::ALL {
            if let (Some((c, _)), Some((u, _))) = (code_for(m), unit_code_for(m)) {
                assert_eq!(meaning(c), Some(CodeMeaning::Metric(m)));
                assert_eq!(unit(u), m.canonical_unit());
            }
        }
    }
}
