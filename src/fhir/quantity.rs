//! Exact decimals to FHIR `valueQuantity`, and the unit conversions the UK Core profiles force.
//!
//! The UK Core profiles fix one UCUM unit per vital sign (`Cel`, `kg`, `mmol/L`, ...; clinical.md
//! §1.2), and that unit is vitalgate's canonical unit for the metric. A device reading in another
//! accepted unit (`[degF]`, `[lb_av]`, `kPa`, `m`, `[in_i]`, `mg/dL`) is converted here with
//! integer arithmetic: exactly where the factor is an exact decimal (m, [in_i]), otherwise
//! rounded half away from zero to a number of decimals finer than any device's resolution. The
//! caller records the original value and unit in `Observation.note`, so nothing is lost.

use serde_json::Number;

use crate::reading::{Decimal, Unit};

use super::FhirError;

/// `target = (value + offset) × num / den`, rounded to `decimals` places.
struct Conversion {
    offset: i128,
    num: i128,
    den: i128,
    decimals: u32,
}

fn conversion(from: Unit, to: Unit) -> Option<Conversion> {
    let c = |offset, num, den, decimals| {
        Some(Conversion {
            offset,
            num,
            den,
            decimals,
        })
    };
    match (from, to) {
        // °C = (°F − 32) × 5/9; 0.01 °C is finer than a 0.1 °F display (0.056 °C).
        (Unit::Fahrenheit, Unit::Celsius) => c(-32, 5, 9, 2),
        // 1 [lb_av] = 0.45359237 kg exactly; to the gram.
        (Unit::Pound, Unit::Kilogram) => c(0, 45_359_237, 100_000_000, 3),
        // 1 mm[Hg] = 133.322387415 Pa (UCUM), so 1 kPa = 10^12 / 133322387415 mm[Hg]; 0.1 mm[Hg].
        (Unit::KiloPascal, Unit::MmHg) => c(0, 1_000_000_000_000, 133_322_387_415, 1),
        // Exact decimal factors: no rounding at any realistic precision.
        (Unit::Metre, Unit::Centimetre) => c(0, 100, 1, 6),
        (Unit::Inch, Unit::Centimetre) => c(0, 254, 100, 6),
        // Same factor as `Unit::to_canonical` (glucose 180.16 g/mol), so alerts and FHIR agree.
        (Unit::MgPerDl, Unit::MmolPerL) => c(0, 1000, 18_016, 2),
        _ => None,
    }
}

/// Converts `value` from `from` to `to` (see the module docs for precision).
pub fn convert(value: Decimal, from: Unit, to: Unit) -> Result<Decimal, FhirError> {
    if from == to {
        return Ok(value);
    }
    let c = conversion(from, to).ok_or(FhirError::NoConversion { from, to })?;
    let overflow = FhirError::ValueOutOfRange { value };
    // No fixed window on the exponent: a plausible 0.2 m can arrive with 19 decimals (an i64
    // mantissa holds 19 digits), and the checked i128 steps below refuse whatever does not fit.
    let value = value.normalized();
    let pow = |e: u32| 10i128.checked_pow(e);
    let (v_num, v_den) = if value.exponent >= 0 {
        let p = pow(value.exponent.unsigned_abs().into()).ok_or(overflow.clone())?;
        (
            i128::from(value.mantissa)
                .checked_mul(p)
                .ok_or(overflow.clone())?,
            1i128,
        )
    } else {
        (
            i128::from(value.mantissa),
            pow(value.exponent.unsigned_abs().into()).ok_or(overflow.clone())?,
        )
    };
    let scale = pow(c.decimals).ok_or(overflow.clone())?;
    let num = c
        .offset
        .checked_mul(v_den)
        .and_then(|o| v_num.checked_add(o))
        .and_then(|n| n.checked_mul(c.num))
        .and_then(|n| n.checked_mul(scale))
        .ok_or(overflow.clone())?;
    let den = v_den.checked_mul(c.den).ok_or(overflow.clone())?;
    let scaled = div_round_half_away(num, den);
    let mantissa = i64::try_from(scaled).map_err(|_| overflow.clone())?;
    let exponent = i8::try_from(c.decimals).map_err(|_| overflow)?;
    Ok(Decimal::new(mantissa, -exponent).normalized())
}

/// `n / d` rounded half away from zero; `d` is positive here.
fn div_round_half_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    let r = n % d;
    if r.unsigned_abs() * 2 >= d.unsigned_abs() {
        q + n.signum()
    } else {
        q
    }
}

/// The decimal as a JSON number: an integer when it is one (`72`, not `72.0`), otherwise the
/// nearest `f64`, which serde_json prints in its shortest round-trip form (`37.6`).
pub fn json_number(value: Decimal) -> Result<Number, FhirError> {
    let d = value.normalized();
    if d.exponent >= 0 {
        let int = 10i64
            .checked_pow(u32::from(d.exponent.unsigned_abs()))
            .and_then(|p| d.mantissa.checked_mul(p));
        if let Some(i) = int {
            return Ok(Number::from(i));
        }
    }
    Number::from_f64(d.to_f64()).ok_or(FhirError::ValueOutOfRange { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(m: i64, e: i8, from: Unit, to: Unit) -> String {
        convert(Decimal::new(m, e), from, to).unwrap().to_string()
    }

    #[test]
    fn fahrenheit_body_temperature_converts_to_celsius_two_decimals() {
        assert_eq!(conv(986, -1, Unit::Fahrenheit, Unit::Celsius), "37");
        assert_eq!(conv(1004, -1, Unit::Fahrenheit, Unit::Celsius), "38");
        // 99.9 °F = 37.7222... °C
        assert_eq!(conv(999, -1, Unit::Fahrenheit, Unit::Celsius), "37.72");
        // 101.3 °F = 38.5 °C exactly
        assert_eq!(conv(1013, -1, Unit::Fahrenheit, Unit::Celsius), "38.5");
    }

    #[test]
    fn pounds_convert_to_kilograms_to_the_gram() {
        // 150.2 lb × 0.45359237 = 68.129573974 kg
        assert_eq!(conv(1502, -1, Unit::Pound, Unit::Kilogram), "68.13");
        assert_eq!(conv(1, 0, Unit::Pound, Unit::Kilogram), "0.454");
    }

    #[test]
    fn kilopascal_converts_to_mmhg_one_decimal() {
        // 16 kPa = 120.0098 mm[Hg]
        assert_eq!(conv(16, 0, Unit::KiloPascal, Unit::MmHg), "120");
        // 10.7 kPa = 80.2566 mm[Hg]
        assert_eq!(conv(107, -1, Unit::KiloPascal, Unit::MmHg), "80.3");
    }

    #[test]
    fn length_conversions_are_exact() {
        assert_eq!(conv(1755, -3, Unit::Metre, Unit::Centimetre), "175.5");
        assert_eq!(conv(705, -1, Unit::Inch, Unit::Centimetre), "179.07");
    }

    #[test]
    fn glucose_mg_per_dl_converts_to_mmol_per_l() {
        // 90 mg/dL / 18.016 = 4.9956 mmol/L
        assert_eq!(conv(90, 0, Unit::MgPerDl, Unit::MmolPerL), "5");
        // 126 mg/dL / 18.016 = 6.9938
        assert_eq!(conv(126, 0, Unit::MgPerDl, Unit::MmolPerL), "6.99");
    }

    #[test]
    fn same_unit_keeps_exact_digits() {
        let d = Decimal::new(3760, -2);
        let out = convert(d, Unit::Celsius, Unit::Celsius).unwrap();
        assert_eq!((out.mantissa, out.exponent), (3760, -2));
    }

    #[test]
    fn unrelated_units_are_refused() {
        assert!(matches!(
            convert(Decimal::int(1), Unit::Percent, Unit::Celsius),
            Err(FhirError::NoConversion { .. })
        ));
    }

    #[test]
    fn huge_values_error_instead_of_overflowing() {
        let e = convert(Decimal::new(i64::MAX, 18), Unit::Pound, Unit::Kilogram);
        assert!(matches!(e, Err(FhirError::ValueOutOfRange { .. })));
        let e = convert(Decimal::new(1, -128), Unit::Pound, Unit::Kilogram);
        assert!(matches!(e, Err(FhirError::ValueOutOfRange { .. })));
    }

    #[test]
    fn a_plausible_value_with_nineteen_decimals_converts() {
        // Found by `group_for_fhir_groups_always_map_when_readings_are_valid`: 0.2 m to 19
        // decimals validates (20 cm is the lowest plausible height), so FHIR must map it too.
        assert_eq!(
            conv(
                1_999_999_999_999_999_695,
                -19,
                Unit::Metre,
                Unit::Centimetre
            ),
            "20"
        );
        assert_eq!(
            conv(9_000_000_000_000_000_000, -19, Unit::Pound, Unit::Kilogram),
            "0.408"
        );
    }

    #[test]
    fn negative_values_round_half_away_from_zero() {
        // −40 °F = −40 °C; −0.5 °F = −18.0555… °C
        assert_eq!(conv(-40, 0, Unit::Fahrenheit, Unit::Celsius), "-40");
        assert_eq!(conv(-5, -1, Unit::Fahrenheit, Unit::Celsius), "-18.06");
    }

    #[test]
    fn json_number_prints_integers_without_fraction() {
        assert_eq!(json_number(Decimal::int(72)).unwrap().to_string(), "72");
        assert_eq!(
            json_number(Decimal::new(720, -1)).unwrap().to_string(),
            "72"
        );
        assert_eq!(json_number(Decimal::new(12, 1)).unwrap().to_string(), "120");
    }

    #[test]
    fn json_number_keeps_significant_decimals() {
        assert_eq!(
            json_number(Decimal::new(3760, -2)).unwrap().to_string(),
            "37.6"
        );
        assert_eq!(
            json_number(Decimal::new(364, -1)).unwrap().to_string(),
            "36.4"
        );
        assert_eq!(
            json_number(Decimal::new(5, -3)).unwrap().to_string(),
            "0.005"
        );
    }
}
