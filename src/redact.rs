//! Keeping NHS Numbers out of messages built from what an operator wrote.
//!
//! A config file holds NHS Numbers, and the TOML parser's own messages quote the source line
//! under a caret: an unquoted `nhs_number = 9434765919`, a duplicate key or an unterminated
//! string would print the number in clear from `check-config`, from `run` (the journal) and,
//! on a refused reload, into the append-only audit log. So:
//!
//! - [`ParseError`] is the only form a TOML error leaves the config loader in: the kind of
//!   problem, the key path, the line and the column, and never the excerpt. Values serde
//!   quotes in its messages (`invalid type: integer `…``) are dropped when they hold 4 or
//!   more digits in a row.
//! - [`scrub`] is the net under every config message: any run of 10 or more digits (spaces
//!   or hyphens between them allowed, as in `943 476 5919`) is replaced, whatever it is.
//!   It over-hides on purpose: a long number in a message is always findable by its key.
//!
//! A value is always findable from its key, line and column; the message need not repeat it.

use std::borrow::Cow;
use std::fmt;

/// What replaces a run of 10 or more digits.
pub const HIDDEN_DIGITS: &str = "<10+ digits, not shown>";

/// What replaces a quoted value with 4 or more digits in a parser message.
pub const HIDDEN_VALUE: &str = "<value not shown>";

/// Replaces every run of 10 or more digits (up to 3 spaces, tabs or hyphens between two
/// digits allowed) with [`HIDDEN_DIGITS`]. Anything shorter is left as it is.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // A group: digits, with single separators between two digits.
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits += 1;
                j += 1;
                end = j;
            } else if let Some(gap) = separator_gap(&chars[j..]) {
                j += gap;
            } else {
                break;
            }
        }
        if digits >= 10 {
            out.push_str(HIDDEN_DIGITS);
            changed = true;
        } else {
            out.extend(&chars[start..end]);
        }
        i = end;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// The length of a gap between two digits that still joins them: 1 to 3 spaces, tabs or
/// hyphens (`NhsNumber::parse` ignores spaces and hyphens anywhere) followed by a digit.
fn separator_gap(chars: &[char]) -> Option<usize> {
    let gap = chars
        .iter()
        .take(4)
        .take_while(|c| matches!(c, ' ' | '-' | '\t'))
        .count();
    ((1..=3).contains(&gap) && chars.get(gap).is_some_and(char::is_ascii_digit)).then_some(gap)
}

/// Whether `text` holds a run [`scrub`] would hide.
pub fn has_long_number(text: &str) -> bool {
    matches!(scrub(text), Cow::Owned(_))
}

/// The `Debug` form of a stored or in-flight NHS Number: `Some(***-***-5919)` or `None`.
///
/// Types that hold an NHS Number as text (`ingest::Frame`, `store::ReadingRecord`) write
/// their `Debug` by hand with this instead of deriving it (`tests/debug_redaction.rs`
/// refuses a derived one).
pub struct MaskedNhs<'a>(pub Option<&'a str>);

impl fmt::Debug for MaskedNhs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "Some({})", crate::config::redact_nhs_number(n)),
            None => f.write_str("None"),
        }
    }
}

/// The `Debug` form of JSON that may hold an NHS Number (a rendered FHIR Observation): the
/// JSON with every run of 10 or more digits hidden.
pub struct ScrubbedJson<'a>(pub &'a serde_json::Value);

impl fmt::Debug for ScrubbedJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scrub(&self.0.to_string()))
    }
}

/// Drops quoted segments (between backticks or double quotes) that hold 4 or more digits in
/// a row: serde's `invalid type: integer `9434765919`` becomes `invalid type: integer
/// <value not shown>`.
fn drop_quoted_numbers(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            break;
        };
        let inner = &after[..close];
        out.push_str(&rest[..open]);
        if has_digit_run(inner, 4) {
            out.push_str(HIDDEN_VALUE);
        } else {
            out.push(quote);
            out.push_str(inner);
            out.push(quote);
        }
        rest = &after[close + 1..];
    }
    // An unbalanced quote: keep the rest only if it holds no digit run.
    if has_digit_run(rest, 4) {
        out.push_str(HIDDEN_VALUE);
    } else {
        out.push_str(rest);
    }
    out
}

fn has_digit_run(s: &str, n: usize) -> bool {
    let mut run = 0;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= n {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// A TOML parse or schema error without the source excerpt: key path, line, column, kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Dotted key path (`patient[0].nhs_number`), empty at the document root.
    pub key: String,
    /// What is wrong, e.g. `invalid type: integer <value not shown>, expected a string`.
    pub message: String,
    /// 1-based line and column, when the parser knows where.
    pub location: Option<(usize, usize)>,
}

impl ParseError {
    /// From a `toml` error over `text`; the key path is found from the error's span
    /// ([`crate::toml_path::at`]).
    pub fn from_toml(inner: toml::de::Error, text: &str) -> ParseError {
        let key = scrub(&crate::toml_path::of_error(&inner, text)).into_owned();
        // `message()` is the kind alone; `Display` would add the excerpt.
        let message = inner.message().trim().replace('\n', "; ");
        let message = scrub(&drop_quoted_numbers(&message)).into_owned();
        let location = inner.span().map(|span| line_column(text, span.start));
        ParseError {
            key,
            message,
            location,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_ten_digits_in_any_grouping() {
        for n in [
            "9434765919",
            "943 476 5919",
            "943-476-5919",
            "x9434765919y",
            "\"943  476 - 5919\"",
        ] {
            let s = scrub(n);
            assert!(!s.contains("5919"), "{n} -> {s}");
            assert!(s.contains(HIDDEN_DIGITS), "{n} -> {s}");
        }
    }

    #[test]
    fn scrub_keeps_shorter_numbers_and_text() {
        let t = "device[1].baud: 9600 is outside 50..=4000000 (line 12, column 3)";
        assert_eq!(scrub(t), t);
    }

    #[test]
    fn quoted_values_with_four_digits_are_dropped_from_parser_messages() {
        assert_eq!(
            drop_quoted_numbers("invalid type: integer `943476591`, expected a string"),
            "invalid type: integer <value not shown>, expected a string"
        );
        assert_eq!(
            drop_quoted_numbers("unknown field `spo2_scal`, expected `spo2_scale`"),
            "unknown field `spo2_scal`, expected `spo2_scale`"
        );
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_column("a = 1\nbb = 2\n", 6), (2, 1));
        assert_eq!(line_column("a = 1\nbb = 2\n", 11), (2, 6));
    }
}
