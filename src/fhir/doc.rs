//! The Observation document as typed, borrowing structs: what [`super::observation`] and
//! [`super::news2_observation`] build, and what the publisher serializes straight to bytes.
//!
//! Why typed rather than `serde_json::json!`: an Observation is rendered for every reading at
//! publish time, and building a `Value` tree (a `BTreeMap` and an owned `String` per key and
//! per code) made rendering the publisher's main cost, mostly in the allocator. These structs
//! borrow the code tables' `&'static str`s and allocate only the id, the time and the notes.
//!
//! **Field order is wire order and must stay alphabetical** (byte order of the key, as a
//! `serde_json::Map` sorts): the JSON is then byte-identical to what `serde_json::Value` gives,
//! which the golden files, the publisher's bytes and [`super::observation`]'s `Value` all agree
//! on (`fhir::tests::typed_bytes_equal_value_bytes_for_every_case` checks it). Keep it so: a
//! redelivery after an upgrade is then byte-identical too, not merely equal by id.
//!
//! Parts that are the same for every Observation of a kind (category, code, the recording
//! setting extension, meta) are serialized once and then copied as bytes ([`cached`]): they
//! are about half of an Observation's bytes, and serde_json otherwise escapes every one of
//! those static strings again for every reading. A cached part is the serializer's own output
//! for the same struct, so the bytes cannot differ.

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Number;

use super::codes::{Category, Code, MetricCodes};
use super::{FhirError, RecordingSetting};

/// A part of the document: built for this Observation, or a cached static part.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Part<T> {
    Built(T),
    Cached(&'static RawValue),
}

/// Which static part. Addresses identify `&'static` data only: a static's address never
/// holds other content, so equal keys mean equal parts (equal content at two addresses only
/// costs a second entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PartKey {
    Category(Category),
    Setting(RecordingSetting),
    /// `meta` for this profile URL.
    Profile((usize, usize)),
    /// `code` from these codings and this text.
    Code {
        codings: (usize, usize),
        text: (usize, usize),
    },
}

impl PartKey {
    pub fn code(codes: &MetricCodes) -> PartKey {
        PartKey::Code {
            codings: (codes.codings.as_ptr() as usize, codes.codings.len()),
            text: addr(codes.text),
        }
    }
}

/// Address and length of a static string (a [`PartKey`] component).
pub(crate) fn addr(s: &'static str) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

/// The part for `key`, serialized by `build` the first time it is asked for. The cache holds
/// one entry per static table entry, so it is bounded by the code tables.
pub(crate) fn cached<T: Serialize>(
    key: PartKey,
    build: impl FnOnce() -> T,
) -> Result<Part<T>, FhirError> {
    static PARTS: OnceLock<RwLock<HashMap<PartKey, &'static RawValue>>> = OnceLock::new();
    let parts = PARTS.get_or_init(Default::default);
    // A panic while holding the lock cannot leave a half-written entry (one insert).
    if let Some(raw) = parts
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(Part::Cached(raw));
    }
    let raw = serde_json::value::to_raw_value(&build())
        .map_err(|e| FhirError::Serialize(e.to_string()))?;
    let raw: &'static RawValue = Box::leak(raw);
    let mut parts = parts.write().unwrap_or_else(PoisonError::into_inner);
    Ok(Part::Cached(parts.entry(key).or_insert(raw)))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Observation<'a> {
    pub category: Part<[CodeableConcept<'a>; 1]>,
    pub code: Part<CodeableConcept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<Component<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub derived_from: Vec<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceRef<'a>>,
    pub effective_date_time: String,
    pub extension: Part<[Extension<'a>; 1]>,
    pub id: String,
    pub identifier: [Identifier<'a>; 1],
    pub meta: Part<Meta<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub note: Vec<Note>,
    pub resource_type: &'static str,
    pub status: &'static str,
    pub subject: SubjectRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_codeable_concept: Option<CodeableConcept<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
}

/// A coding (`code`, `display`, `system`: alphabetical, see the module docs).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Coding {
    pub code: &'static str,
    pub display: &'static str,
    pub system: &'static str,
}

impl From<Code> for Coding {
    fn from(c: Code) -> Self {
        Coding {
            code: c.code,
            display: c.display,
            system: c.system,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct CodeableConcept<'a> {
    pub coding: Vec<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
}

impl<'a> CodeableConcept<'a> {
    pub fn new(codings: &[Code], text: Option<&'a str>) -> Self {
        CodeableConcept {
            coding: codings.iter().copied().map(Coding::from).collect(),
            text,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Component<'a> {
    pub code: CodeableConcept<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_quantity: Option<Quantity>,
}

/// A UCUM quantity (`code`, `system`, `unit`, `value`).
#[derive(Debug, Serialize)]
pub(crate) struct Quantity {
    pub code: &'static str,
    pub system: &'static str,
    pub unit: &'static str,
    pub value: Number,
}

#[derive(Debug, Serialize)]
pub(crate) struct Reference {
    pub reference: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeviceRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<&'a str>,
    pub identifier: Identifier<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct SubjectRef<'a> {
    pub identifier: Identifier<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// An identifier; the value is borrowed (an NHS Number, a gateway id) or owned (an id).
#[derive(Debug, Serialize)]
pub(crate) struct Identifier<'a> {
    pub system: &'static str,
    pub value: std::borrow::Cow<'a, str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Extension<'a> {
    pub url: &'static str,
    pub value_codeable_concept: CodeableConcept<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Meta<'a> {
    pub profile: [&'a str; 1],
}

#[derive(Debug, Serialize)]
pub(crate) struct Note {
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::codes;
    use crate::reading::Metric;

    #[test]
    fn a_cached_part_is_the_serializers_own_bytes_and_is_built_once() {
        let hr = codes::metric(Metric::HeartRate);
        let built = || CodeableConcept::new(hr.codings, Some(hr.text));
        let expected = serde_json::to_string(&Part::Built(built())).unwrap();
        let first = cached(PartKey::code(&hr), built).unwrap();
        assert_eq!(serde_json::to_string(&first).unwrap(), expected);
        let again = cached(PartKey::code(&hr), || -> CodeableConcept<'static> {
            panic!("built a second time")
        })
        .unwrap();
        assert!(matches!(again, Part::Cached(_)));
        assert_eq!(serde_json::to_string(&again).unwrap(), expected);
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(Part::Built(built())).unwrap(),
            "the Value form parses a cached part"
        );
    }
}
