//! Line-oriented ASCII devices: the line framing shared by the text drivers (Masimo, data-driven
//! profiles) and the generic data-driven decoder, [`LineDecoder`], whose fields come from a
//! `devices/*.toml` profile (`[line]` table, see [`super::profile`]), so a simple new device needs
//! no code.
//!
//! A line ends at LF; CR on either side is dropped (devices send CR LF or LF CR). Lines are
//! capped at the profile's `max_line` bytes: a longer one is skipped, never buffered without
//! bound. A field is found in a line by key (`KEY=VALUE` tokens, separated by whitespace) or by
//! a regex with one capture group; its text is a plain decimal, optionally followed by a fixed
//! suffix such as `%`, scaled by a power of ten so the value stays exact. A value equal to one
//! of the field's `missing` markers is [`Absent::Missing`], never a number.
//!
//! Deliberately not supported: device timestamps (line devices are read live, so ingest's
//! receive time is the reading's time), checksums, binary framing, and arithmetic beyond
//! power-of-ten scaling (a device that needs more deserves a real driver with tests).

use regex_lite::Regex;

use crate::drivers::{DecodeError, Step, StreamDecoder};
use crate::reading::{parse_exact, Absent, Decimal, Flag, Metric, Reading, Unit};

/// What [`next_line`] found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum LineStep<'a> {
    /// No LF yet and within the cap.
    NeedMore,
    /// One line, CR and LF stripped, and the bytes it used (including the LF).
    Line { consumed: usize, text: &'a [u8] },
    /// A line longer than the cap: skip `consumed` bytes.
    TooLong { consumed: usize },
}

/// Frames one LF-terminated line, at most `max` bytes before the LF.
pub fn next_line(buf: &[u8], max: usize) -> LineStep<'_> {
    match buf
        .iter()
        .take(max.saturating_add(1))
        .position(|&b| b == b'\n')
    {
        Some(end) => {
            let line = buf.get(..end).unwrap_or(&[]);
            let start = line.iter().take_while(|&&b| b == b'\r').count();
            let stop = line.len() - line.iter().rev().take_while(|&&b| b == b'\r').count();
            LineStep::Line {
                consumed: end + 1,
                text: line.get(start..stop.max(start)).unwrap_or(&[]),
            }
        }
        None if buf.len() > max => {
            // Skip up to and including the next LF if there is one, else all we have.
            let consumed = buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(buf.len(), |i| i + 1);
            LineStep::TooLong { consumed }
        }
        None => LineStep::NeedMore,
    }
}

/// Where a field's text is found in a line.
#[derive(Debug, Clone)]
pub enum Source {
    /// The value of the whitespace-separated token `KEY<assign>VALUE`.
    Key { key: String, assign: String },
    /// The first capture group of a regex.
    Pattern(Regex),
}

/// One validated field of a data-driven profile.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub metric: Metric,
    pub unit: Unit,
    pub source: Source,
    /// Power of ten the device's number is multiplied by (`-1` for a scale of 0.1).
    pub scale_exp: i8,
    /// Text after the number that may be glued to it (e.g. `%`), stripped before parsing.
    pub suffix: String,
    /// Exact texts (after the suffix is stripped) that mean "no value".
    pub missing: Vec<String>,
    /// A line without this field is an error rather than a line without this reading.
    pub required: bool,
}

/// A regex that, when it matches a line, flags that line's readings.
#[derive(Debug, Clone)]
pub struct FlagRule {
    pub pattern: Regex,
    pub flag: Flag,
    /// Whether the flag also withholds the numbers (e.g. "probe off").
    pub suppress: bool,
}

/// A validated `[line]` table.
#[derive(Debug, Clone)]
pub struct LineSpec {
    /// The profile name, for error messages.
    pub name: String,
    pub max_line: usize,
    /// Only lines matching this are data lines; others are consumed without readings.
    pub select: Option<Regex>,
    pub fields: Vec<FieldSpec>,
    pub flags: Vec<FlagRule>,
}

impl LineSpec {
    /// Decodes one line (without its terminator).
    pub fn decode_line(&self, line: &[u8]) -> Result<Vec<Reading>, DecodeError> {
        let text = std::str::from_utf8(line)
            .map_err(|e| DecodeError::Malformed(format!("{}: line is not UTF-8: {e}", self.name)))?
            .trim();
        if text.is_empty() || self.select.as_ref().is_some_and(|re| !re.is_match(text)) {
            return Ok(Vec::new());
        }
        let mut flags = Vec::new();
        let mut suppress = false;
        for rule in &self.flags {
            if rule.pattern.is_match(text) {
                flags.push(rule.flag);
                suppress |= rule.suppress;
            }
        }
        let mut out = Vec::new();
        for field in &self.fields {
            let Some(raw) = find(&field.source, text) else {
                if field.required {
                    return Err(DecodeError::Malformed(format!(
                        "{}: {} field ({}) not in line",
                        self.name,
                        field.metric,
                        describe(&field.source)
                    )));
                }
                continue;
            };
            let value = field_value(field, raw).map_err(|why| {
                DecodeError::Malformed(format!(
                    "{}: {} field {raw:?}: {why}",
                    self.name, field.metric
                ))
            })?;
            let reading = match value {
                Some(d) if !suppress => Reading::number(field.metric, d, field.unit),
                _ => Reading {
                    unit: Some(field.unit),
                    ..Reading::absent(field.metric, Absent::Missing)
                },
            };
            out.push(reading.with_flags(flags.iter().copied()));
        }
        Ok(out)
    }

    /// A line for the simulator: `KEY<assign>VALUE` tokens for the key-based fields whose
    /// metric has a value in `values`, or their first missing marker. Pattern fields are left
    /// out (a regex cannot be run backwards).
    pub fn encode_line(&self, values: &[(Metric, Option<Decimal>)]) -> Vec<u8> {
        let mut tokens = Vec::new();
        for field in &self.fields {
            let Source::Key { key, assign } = &field.source else {
                continue;
            };
            let Some((_, v)) = values.iter().find(|(m, _)| *m == field.metric) else {
                continue;
            };
            let text = match v {
                Some(d) => {
                    let shifted =
                        Decimal::new(d.mantissa, d.exponent.saturating_sub(field.scale_exp));
                    format!("{shifted}{}", field.suffix)
                }
                None => match field.missing.first() {
                    Some(m) => format!("{m}{}", field.suffix),
                    None => continue,
                },
            };
            tokens.push(format!("{key}{assign}{text}"));
        }
        let mut line = tokens.join(" ").into_bytes();
        line.extend(b"\r\n");
        line
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Key { key, assign } => format!("key {key}{assign}"),
        Source::Pattern(re) => format!("pattern {}", re.as_str()),
    }
}

fn find<'a>(source: &Source, text: &'a str) -> Option<&'a str> {
    match source {
        Source::Key { key, assign } => text.split_whitespace().find_map(|tok| {
            tok.strip_prefix(key.as_str())?
                .strip_prefix(assign.as_str())
        }),
        Source::Pattern(re) => re.captures(text)?.get(1).map(|m| m.as_str()),
    }
}

/// The field's exact value, `None` for a missing marker, or why the text is not a number.
fn field_value(field: &FieldSpec, raw: &str) -> Result<Option<Decimal>, String> {
    let body = raw
        .strip_suffix(field.suffix.as_str())
        .unwrap_or(raw)
        .trim();
    if field.missing.iter().any(|m| m == body || m == raw) {
        return Ok(None);
    }
    let d = parse_exact(body)
        .ok_or_else(|| "not a plain decimal number and not a missing marker".to_string())?;
    let exponent = d
        .exponent
        .checked_add(field.scale_exp)
        .ok_or_else(|| "scaled value out of range".to_string())?;
    Ok(Some(Decimal::new(d.mantissa, exponent)))
}

/// The stream decoder for a data-driven profile.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    spec: std::sync::Arc<LineSpec>,
}

impl LineDecoder {
    pub fn new(spec: std::sync::Arc<LineSpec>) -> Self {
        LineDecoder { spec }
    }
}

impl StreamDecoder for LineDecoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        match next_line(buf, self.spec.max_line) {
            LineStep::NeedMore => Step::NeedMore,
            LineStep::TooLong { consumed } => Step::Skip {
                consumed,
                error: DecodeError::BadLength(format!(
                    "{}: line longer than {} bytes",
                    self.spec.name, self.spec.max_line
                )),
            },
            LineStep::Line { consumed, text } => match self.spec.decode_line(text) {
                Ok(readings) => Step::Frame { consumed, readings },
                Err(error) => Step::Skip { consumed, error },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_line_strips_cr_on_either_side() {
        // protocols.md §2.3: CR LF, or LF CR in MDP's prose: accept either.
        assert_eq!(
            next_line(b"ab\r\n", 10),
            LineStep::Line {
                consumed: 4,
                text: b"ab"
            }
        );
        assert_eq!(
            next_line(b"\rab\n", 10),
            LineStep::Line {
                consumed: 4,
                text: b"ab"
            }
        );
    }

    #[test]
    fn next_line_needs_more_without_lf() {
        assert_eq!(next_line(b"abc", 10), LineStep::NeedMore);
    }

    #[test]
    fn next_line_skips_overlong_line_through_its_lf() {
        assert_eq!(
            next_line(b"abcdef\nx", 3),
            LineStep::TooLong { consumed: 7 }
        );
        assert_eq!(next_line(b"abcdef", 3), LineStep::TooLong { consumed: 6 });
    }

    #[test]
    fn next_line_accepts_line_of_exactly_max() {
        assert_eq!(
            next_line(b"abc\n", 3),
            LineStep::Line {
                consumed: 4,
                text: b"abc"
            }
        );
    }
}
