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

use serde::Serialize;
use serde_json::Number;

use super::codes::Code;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Observation<'a> {
    pub category: [CodeableConcept<'a>; 1],
    pub code: CodeableConcept<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<Component<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_absent_reason: Option<CodeableConcept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub derived_from: Vec<Reference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceRef<'a>>,
    pub effective_date_time: String,
    pub extension: [Extension<'a>; 1],
    pub id: String,
    pub identifier: [Identifier<'a>; 1],
    pub meta: Meta<'a>,
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
