//! Golden files: every kind of Observation (`tests/fhir_cases`) is regenerated and compared with
//! `tests/golden/fhir/<case>.json`. A difference is a change in what the platform receives and
//! must be reviewed: rerun with `UPDATE_GOLDEN=1` to rewrite the files, then read the git diff.

mod fhir_cases;

use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fhir")
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values always serialize");
    s.push('\n');
    s
}

#[test]
fn fhir_golden_files_match_generated_observations() {
    let dir = golden_dir();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let generated = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for (name, obs) in fhir_cases::all() {
        let text = pretty(&obs);
        let file = format!("{name}.json");
        std::fs::write(generated.path().join(&file), &text).unwrap();
        let golden = dir.join(&file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == text => {}
            Ok(_) => mismatches.push(format!("{file}: differs")),
            Err(e) => mismatches.push(format!("{file}: cannot read golden file ({e})")),
        }
    }
    if !mismatches.is_empty() {
        // keep the generated files for a diff
        let kept = generated.keep();
        panic!(
            "golden FHIR output changed:\n  {}\ngenerated files kept in {}; if the change is intended, rerun with UPDATE_GOLDEN=1 and review `git diff tests/golden/fhir`",
            mismatches.join("\n  "),
            kept.display()
        );
    }
}

#[test]
fn fhir_golden_dir_has_no_stale_files() {
    let names: Vec<String> = fhir_cases::all()
        .into_iter()
        .map(|(n, _)| format!("{n}.json"))
        .collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            names.contains(&file),
            "tests/golden/fhir/{file} is produced by no case: delete it"
        );
    }
}

#[test]
fn fhir_golden_cases_cover_every_metric_panel_absent_and_news2() {
    let names: Vec<String> = fhir_cases::all().into_iter().map(|(n, _)| n).collect();
    for m in vitalgate::reading::Metric::ALL {
        assert!(names.iter().any(|n| n == m.as_str()), "{m}");
    }
    for n in ["blood_pressure_panel", "absent_spo2_missing", "news2"] {
        assert!(names.iter().any(|x| x == n), "{n}");
    }
}
