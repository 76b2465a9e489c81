//! The key path of a place in a TOML document, for naming what a deserialisation error is
//! about (`patient[0].nhs_number`, `store`).
//!
//! The config and the fleet's overlays are deserialised straight from `toml`; the parser's
//! error carries the span of the key, value or table header it is about, and [`at`] turns
//! that span back into the path of keys and array indices, from the same document parsed with
//! spans. This replaces `serde_path_to_error`, which wrapped every visitor of the config
//! schema and so compiled the whole schema's deserialisation a second time (~490 KiB of the
//! production binary, issue 18).

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The path of what a `toml` deserialisation error of `text` is about ([`at`] its span's
/// start); empty when it has no span or is about the document root.
pub fn of_error(e: &toml::de::Error, text: &str) -> String {
    e.span()
        .map_or_else(String::new, |span| at(text, span.start))
}

/// The path (`gateway.id`, `patient[0].nhs_number`, `device[1]`) of the innermost key, value
/// or table header of `text` whose span holds `offset`; empty when nothing but the document
/// root does. In text that is not valid TOML, the path is found in what could be parsed.
///
/// The document is parsed with `toml`'s own spanned parser, the one that deserialises it, so
/// no second TOML parser is linked (`toml_edit` was ~110 KiB of the binary, issue 18).
pub fn at(text: &str, offset: usize) -> String {
    // What could be parsed: a duplicate key or table is itself the error to name.
    let (doc, _errors) = DeTable::parse_recoverable(text);
    let mut best = Best::default();
    walk_table(doc.get_ref(), "", offset, &mut best);
    best.path
}

/// The smallest span found so far that holds the offset, and its path.
#[derive(Default)]
struct Best {
    len: Option<usize>,
    path: String,
}

impl Best {
    fn offer(&mut self, span: Range<usize>, offset: usize, path: &str) {
        // An empty span (the end of the document) holds the offset at its start.
        let holds = span.start <= offset && (offset < span.end || span.start == span.end);
        let len = span.end - span.start;
        if holds && self.len.is_none_or(|best| len <= best) {
            self.len = Some(len);
            self.path = path.to_owned();
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn walk_table(table: &DeTable<'_>, path: &str, offset: usize, best: &mut Best) {
    for (key, value) in table {
        let here = join(path, key.get_ref());
        best.offer(key.span(), offset, &here);
        walk_value(value, &here, offset, best);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, path: &str, offset: usize, best: &mut Best) {
    best.offer(value.span(), offset, path);
    match value.get_ref() {
        DeValue::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                walk_value(element, &format!("{path}[{i}]"), offset, best);
            }
        }
        DeValue::Table(table) => walk_table(table, path, offset, best),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path at the first occurrence of `needle` in `text`.
    fn path_at(text: &str, needle: &str) -> String {
        at(text, text.find(needle).expect("needle in text"))
    }

    #[test]
    fn a_value_in_a_table_is_named_by_table_and_key() {
        let text = "[gateway]\nid = \"g\"\n[store]\nretention_days = \"x\"\n";
        assert_eq!(path_at(text, "\"x\""), "store.retention_days");
        assert_eq!(path_at(text, "retention_days"), "store.retention_days");
    }

    #[test]
    fn a_table_header_is_named_by_the_table() {
        let text = "[gateway]\nid = \"g\"\n[store]\nretention_days = 3\n";
        assert_eq!(path_at(text, "[store]"), "store");
    }

    #[test]
    fn array_of_tables_entries_are_named_by_index() {
        let text = "[[patient]]\nid = \"p1\"\n[[patient]]\nid = \"p2\"\nnhs_number = 9434765919\n";
        assert_eq!(path_at(text, "9434765919"), "patient[1].nhs_number");
        assert_eq!(at(text, text.rfind("[[patient]]").unwrap()), "patient[1]");
    }

    #[test]
    fn inline_tables_arrays_and_dotted_keys_are_followed() {
        let text = "a = { b = [1, \"two\"] }\nc.d = true\n";
        assert_eq!(path_at(text, "\"two\""), "a.b[1]");
        assert_eq!(path_at(text, "true"), "c.d");
    }

    #[test]
    fn a_duplicate_table_is_named_by_the_table() {
        let text =
            "[store]\nretention_days = 3\n[gateway]\nid = \"g\"\n[store]\nretention_days = 0\n";
        let second = text.rfind("store").unwrap();
        assert_eq!(at(text, second), "store");
    }

    #[test]
    fn outside_any_key_or_in_invalid_toml_is_the_root() {
        assert_eq!(at("# only a comment\n", 3), "");
        assert_eq!(at("a = [\n", 2), "");
    }
}
