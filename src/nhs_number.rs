//! NHS Number (Modulus 11). Minimal check; the FHIR work extends this module.

/// A validated NHS Number.
#[derive(Clone, PartialEq, Eq)]
pub struct NhsNumber(String);

impl NhsNumber {
    /// Accepts 10 digits, optionally spaced `943 476 5919`; checks Modulus 11.
    pub fn parse(s: &str) -> Result<NhsNumber, String> {
        let digits: Vec<u32> = s.chars().filter(|c| *c != ' ').map(|c| c.to_digit(10).ok_or(())).collect::<Result<_, _>>()
            .map_err(|_| "only digits and spaces are allowed".to_string())?;
        if digits.len() != 10 {
            return Err(format!("{} digits, expected 10", digits.len()));
        }
        let sum: u32 = digits[..9].iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
        let check = match 11 - sum % 11 { 11 => 0, 10 => return Err("check digit would be 10 (never issued)".into()), c => c };
        if check != digits[9] {
            return Err("check digit does not match (Modulus 11)".into());
        }
        Ok(NhsNumber(digits.iter().map(|d| char::from_digit(*d, 10).unwrap_or('0')).collect()))
    }
}
