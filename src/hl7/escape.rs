//! HL7 v2 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh\ \.br\`), both ways.
//!
//! Written here rather than taken from `hl7-parser`: its decoder slices the value by character
//! index as if it were a byte index, which panics on a non-ASCII value followed by an escape
//! (a monitor sending a bed name with an accent would stop the gateway's parser).

use hl7_parser::message::Separators;

/// Decodes the escape sequences of one value; unknown or unterminated sequences are kept as
/// sent (nothing is dropped silently), formatting commands (`\H\`, `\N\`) are removed.
pub fn unescape(value: &str, sep: &Separators) -> String {
    let esc = sep.escape;
    if !value.contains(esc) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let seq = &after[..end];
        match seq {
            "F" => out.push(sep.field),
            "S" => out.push(sep.component),
            "T" => out.push(sep.subcomponent),
            "R" => out.push(sep.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\r'),
            "H" | "N" => {}
            x if x.len() >= 3 && x.len() % 2 == 1 && x.starts_with('X') => {
                match hex::decode(&x[1..])
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                {
                    Some(s) => out.push_str(&s),
                    None => {
                        out.push(esc);
                        out.push_str(seq);
                        out.push(esc);
                    }
                }
            }
            _ => {
                out.push(esc);
                out.push_str(seq);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for a field with the standard separators (`|^~\&`); CR and LF become `\X0D\`
/// and `\X0A\` so a text can never end a segment.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            '\r' => out.push_str("\\X0D\\"),
            '\n' => out.push_str("\\X0A\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_escapes_decode_to_their_separators() {
        let s = Separators::default();
        assert_eq!(
            unescape(r"a\F\b\S\c\T\d\R\e\E\f\X41\g\.br\h", &s),
            "a|b^c&d~e\\fAg\rh"
        );
    }

    #[test]
    fn non_ascii_text_around_escapes_is_kept_whole() {
        let s = Separators::default();
        assert_eq!(unescape(r"Salle é\F\3", &s), "Salle é|3");
        // hl7-parser 0.3's decoder panics on this one (char index used as byte index).
        assert_eq!(unescape("\\é\\", &s), "\\é\\");
    }

    #[test]
    fn unknown_and_unterminated_escapes_are_kept_as_sent() {
        let s = Separators::default();
        assert_eq!(unescape(r"a\Zq\b", &s), r"a\Zq\b");
        assert_eq!(unescape(r"a\F", &s), r"a\F");
        assert_eq!(unescape(r"\XZZ\", &s), r"\XZZ\");
    }

    #[test]
    fn escape_round_trips_through_unescape() {
        let s = Separators::default();
        let text = "bed|1^a&b~c\\d\re\nf";
        assert_eq!(unescape(&escape(text), &s), text);
        assert!(!escape(text).contains(['|', '^', '&', '~', '\r', '\n']));
    }
}
