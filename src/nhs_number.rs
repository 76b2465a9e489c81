//! The NHS Number: a validated 10-digit patient identifier ([`NhsNumber`]).
//!
//! What it does: [`NhsNumber::parse`] accepts the display form `"943 476 5919"` or the plain
//! `"9434765919"` (spaces and hyphens are ignored, as the NHS and the `nhs-number` reference
//! implementation do), checks the Modulus 11 check digit, which the NHS Data Dictionary makes
//! mandatory (clinical.md §3.1), and refuses numbers outside every allocated range (§3.2).
//! [`NhsNumber::range`] says which range a number is in, so configuration can refuse synthetic
//! test numbers on a production gateway.
//!
//! What it deliberately does not do: it never prints the number. `Debug` and `Display` mask all
//! but the last four digits (`***-***-5919`), and error messages never quote the input, because
//! an NHS Number is personal data and logs must never contain one. The only way to the digits is
//! the explicit [`NhsNumber::expose`], used by the FHIR mapping. It implements `Deserialize`
//! (validating) but not `Serialize`, so it cannot leak into JSON by accident. It does not look a
//! number up (PDS tracing is the platform's job): a valid check digit means "well formed", not
//! "belongs to this patient".

use std::fmt;
use std::str::FromStr;

/// A well-formed NHS Number (10 ASCII digits, valid Modulus 11 check digit, allocated range).
#[derive(Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct NhsNumber(String);

/// The allocation range a number falls in (clinical.md §3.2). Only ranges, not issuance: a
/// number in an issued range may still be unassigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NhsNumberRange {
    /// Issued in England, Wales and the Isle of Man (400 000 000–499 999 999, 600 000 000–799 999 999,
    /// and the 3xx numbers above the Scottish CHI range that England also uses).
    EnglandWalesIsleOfMan,
    /// Northern Ireland Health and Care Number (320 000 001–399 999 999).
    NorthernIreland,
    /// Scottish CHI number (0101000000–3112999999, date of birth based).
    ScotlandChi,
    /// Never issued to patients: 9xx (synthetic / PDS test patients) and 5xx (NHS CRS internal
    /// testing). Valid for demos and tests; production configuration should refuse it.
    Test,
}

/// Why a string is not an NHS Number. Messages never contain the input (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error(
        "NHS Number has {digits} digits after removing spaces and hyphens; it needs exactly 10"
    )]
    WrongLength { digits: usize },
    #[error("NHS Number contains a character other than digits, spaces or hyphens at position {position}")]
    NotADigit { position: usize },
    #[error("NHS Number is invalid: Modulus 11 gives check value 10, which no NHS Number uses (NHS Data Dictionary); re-check the digits")]
    CheckValueTen,
    #[error("NHS Number check digit does not match Modulus 11 (NHS Data Dictionary); re-check the digits against the patient record")]
    CheckDigitMismatch,
    #[error("NHS Number is in no allocated range (clinical.md §3.2); re-check the digits")]
    UnallocatedRange,
}

/// Weights for digits 1–9 (NHS Data Dictionary, clinical.md §3.1 step 1).
const WEIGHTS: [u32; 9] = [10, 9, 8, 7, 6, 5, 4, 3, 2];

impl NhsNumber {
    /// Parses and validates. Spaces and hyphens are ignored anywhere; anything else that is not
    /// an ASCII digit is refused.
    pub fn parse(s: &str) -> Result<Self, NhsNumberError> {
        let mut digits = [0u8; 10];
        let mut n = 0usize;
        for (position, c) in s.chars().enumerate() {
            match c {
                ' ' | '-' => {}
                '0'..='9' => {
                    if let Some(slot) = digits.get_mut(n) {
                        *slot = c as u8 - b'0';
                    }
                    n += 1;
                }
                _ => return Err(NhsNumberError::NotADigit { position }),
            }
        }
        if n != 10 {
            return Err(NhsNumberError::WrongLength { digits: n });
        }
        let expected = check_digit(&digits)?;
        if digits.get(9) != Some(&expected) {
            return Err(NhsNumberError::CheckDigitMismatch);
        }
        let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        let number = NhsNumber(text);
        if number.range().is_none() {
            return Err(NhsNumberError::UnallocatedRange);
        }
        Ok(number)
    }

    /// The 10 digits without spaces, for FHIR `identifier.value` (clinical.md §1.5). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The allocation range, or `None` for a number no one allocates (e.g. `0000000000`, 8xx).
    pub fn range(&self) -> Option<NhsNumberRange> {
        let v: u64 = self.0.parse().ok()?;
        Some(match v {
            100_000_000..=3_112_999_999 => NhsNumberRange::ScotlandChi,
            3_113_000_000..=3_200_000_009 => NhsNumberRange::EnglandWalesIsleOfMan,
            3_200_000_010..=3_999_999_999 => NhsNumberRange::NorthernIreland,
            4_000_000_000..=4_999_999_999 | 6_000_000_000..=7_999_999_999 => {
                NhsNumberRange::EnglandWalesIsleOfMan
            }
            5_000_000_000..=5_999_999_999 | 9_000_000_000..=9_999_999_999 => NhsNumberRange::Test,
            _ => return None,
        })
    }

    /// True for numbers never issued to patients (synthetic/test ranges).
    pub fn is_test(&self) -> bool {
        self.range() == Some(NhsNumberRange::Test)
    }

    fn masked(&self) -> String {
        let tail = self.0.get(6..).unwrap_or("????");
        format!("***-***-{tail}")
    }
}

/// Modulus 11 (clinical.md §3.1): weighted sum of digits 1–9, remainder mod 11, 11 − remainder;
/// 11 becomes 0, 10 means the number is invalid.
fn check_digit(digits: &[u8; 10]) -> Result<u8, NhsNumberError> {
    let sum: u32 = digits
        .iter()
        .zip(WEIGHTS)
        .map(|(&d, w)| u32::from(d) * w)
        .sum();
    match 11 - sum % 11 {
        11 => Ok(0),
        10 => Err(NhsNumberError::CheckValueTen),
        c => Ok(c as u8),
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NhsNumber({})", self.masked())
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NhsNumber::parse(s)
    }
}

impl TryFrom<String> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NhsNumber::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // clinical.md §3.3: every listed valid number passes.
    const VALID: [&str; 9] = [
        "9434765919", // [WIKI] worked example
        "9000000009", // [PDS] sandbox Jane Smith
        "9000000017", // [PDS] sandbox
        "9000000025", // [PDS] sandbox
        "9000000033", // [PDS] sandbox
        "9912003888", // [UKC] RichardSmith example
        "9876543210", // [FCI] remainder 0 -> check 0
        "9111231130", // [PDS] karate, remainder 0 case
        "4000000632", // [FCI] England/Wales/IoM
    ];

    #[test]
    fn parse_accepts_every_valid_vector_of_section_3_3() {
        for s in VALID {
            assert_eq!(
                NhsNumber::parse(s).map(|n| n.expose().to_owned()),
                Ok(s.to_owned()),
                "{s}"
            );
        }
    }

    #[test]
    fn parse_accepts_display_form_with_spaces() {
        // clinical.md §3.1: display format "3 3 4"
        assert_eq!(
            NhsNumber::parse("943 476 5919").unwrap().expose(),
            "9434765919"
        );
    }

    #[test]
    fn parse_accepts_hyphenated_form() {
        assert_eq!(
            NhsNumber::parse("943-476-5919").unwrap().expose(),
            "9434765919"
        );
    }

    #[test]
    fn parse_rejects_wrong_check_digit_vectors_of_section_3_4() {
        // clinical.md §3.4: 9000000000, 9000000015, 9876544321, 9912003890, 9434765918
        for s in [
            "9000000000",
            "9000000015",
            "9876544321",
            "9912003890",
            "9434765918",
        ] {
            assert_eq!(
                NhsNumber::parse(s),
                Err(NhsNumberError::CheckDigitMismatch),
                "{s}"
            );
        }
    }

    #[test]
    fn parse_rejects_check_value_ten() {
        // clinical.md §3.4: 1234567890 sums to 210, remainder 1 -> check 10 -> invalid.
        assert_eq!(
            NhsNumber::parse("1234567890"),
            Err(NhsNumberError::CheckValueTen)
        );
    }

    #[test]
    fn parse_rejects_non_digit() {
        // clinical.md §3.4: 987654321X
        assert_eq!(
            NhsNumber::parse("987654321X"),
            Err(NhsNumberError::NotADigit { position: 9 })
        );
    }

    #[test]
    fn parse_rejects_short_and_empty_input() {
        // clinical.md §3.4: "12345", ""
        assert_eq!(
            NhsNumber::parse("12345"),
            Err(NhsNumberError::WrongLength { digits: 5 })
        );
        assert_eq!(
            NhsNumber::parse(""),
            Err(NhsNumberError::WrongLength { digits: 0 })
        );
    }

    #[test]
    fn parse_rejects_eleven_digits() {
        assert_eq!(
            NhsNumber::parse("94347659190"),
            Err(NhsNumberError::WrongLength { digits: 11 })
        );
    }

    #[test]
    fn parse_rejects_all_zeros_as_unallocated() {
        // clinical.md §3.4: 0000000000 passes Mod 11 but is in no issued range.
        assert_eq!(
            NhsNumber::parse("0000000000"),
            Err(NhsNumberError::UnallocatedRange)
        );
    }

    #[test]
    fn range_classifies_sections_3_2_ranges() {
        let r = |s: &str| NhsNumber::parse(s).unwrap().range();
        assert_eq!(r("4000000632"), Some(NhsNumberRange::EnglandWalesIsleOfMan));
        assert_eq!(r("9000000009"), Some(NhsNumberRange::Test));
        assert!(NhsNumber::parse("9434765919").unwrap().is_test());
        assert!(!NhsNumber::parse("4000000632").unwrap().is_test());
    }

    #[test]
    fn debug_and_display_mask_all_but_last_four_digits() {
        let n = NhsNumber::parse("943 476 5919").unwrap();
        assert_eq!(n.to_string(), "***-***-5919");
        assert_eq!(format!("{n:?}"), "NhsNumber(***-***-5919)");
        assert!(!format!("{n:?}{n}{n:#?}").contains("943476"));
    }

    #[test]
    fn error_messages_never_contain_the_input() {
        for s in [
            "9434765918",
            "1234567890",
            "0000000000",
            "94347659X9",
            "943476591",
        ] {
            let e = NhsNumber::parse(s).unwrap_err();
            let msg = format!("{e} {e:?}");
            assert!(!msg.contains(&s[..6]), "{msg}");
        }
    }

    #[test]
    fn deserialize_validates_the_string() {
        let ok: NhsNumber = serde_json::from_str("\"943 476 5919\"").unwrap();
        assert_eq!(ok.expose(), "9434765919");
        let bad = serde_json::from_str::<NhsNumber>("\"9434765918\"").unwrap_err();
        assert!(bad.to_string().contains("check digit"), "{bad}");
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text() {
        for s in [
            "\u{0}",
            "９４３４７６５９１９",
            "--------------",
            "9".repeat(1000).as_str(),
        ] {
            assert!(NhsNumber::parse(s).is_err());
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_single_digit_change_of_a_valid_number_is_rejected(pos in 0usize..10, delta in 1u8..10) {
            // Modulus 11 with weights 10..2 (and the check digit itself) catches every single-digit error.
            let mut digits: Vec<u8> = b"9434765919".to_vec();
            digits[pos] = b'0' + (digits[pos] - b'0' + delta) % 10;
            let s = String::from_utf8(digits).unwrap();
            prop_assert!(NhsNumber::parse(&s).is_err(), "{}", s);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = NhsNumber::parse(&s);
        }
    }
}
