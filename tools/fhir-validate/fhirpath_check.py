#!/usr/bin/env python3
"""Validator (b): FHIR R4 and UK Core invariants and profile rules, evaluated as FHIRPath with the
R4 model (fhirpathpy; without the model, choice elements such as `value` do not resolve and vs-2
is wrongly false, clinical.md §4).

Rules come from the R4 Observation resource (obs-6, obs-7, status/code 1..1), the R4 vital-signs
profile (vs-1, vs-2, vs-3), and the UK Core StructureDefinitions as clinical.md §1.2/§1.3/§1.7
describes them (ukcore-obs-vs-001, LOINC slice 1..1, SNOMED slice 1..*, fixed status/category/
LOINC/UCUM, closed BP slicing on code.text, EarlyWarningTotalScore {ScoreOf}). Which rules apply
is decided by the profile each resource claims in meta.profile.

Usage: fhirpath_check.py FILE_OR_DIR...   Prints "ok FILE" or "INVALID FILE: rule: text; ...".
Exit 0 if all pass, 1 if any fails, 2 on usage or read errors.
"""
import json
import os
import sys

from fhirpathpy import evaluate
from fhirpathpy.models import models

R4 = models["r4"]
UK = "https://fhir.hl7.org.uk/StructureDefinition/"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def quantity_ok(path):
    return (
        f"{path}.ofType(Quantity).all(value.exists() and unit.exists() "
        f"and system = '{UCUM}' and code.exists())"
    )


# (rule id, applies-to predicate on the claimed profile, FHIRPath that must be true)
ALL = lambda p: True
UKCORE = lambda p: p.startswith(UK + "UKCore-Observation")
VITAL = lambda p: p.startswith(UK + "UKCore-Observation-VitalSigns")
ONLY = lambda name: (lambda p: p == UK + name)

RULES = [
    ("R4 Observation.status 1..1", ALL, "status.exists()"),
    ("R4 Observation.code 1..1", ALL, "code.exists()"),
    ("obs-6", ALL, "dataAbsentReason.empty() or value.empty()"),
    ("obs-7", ALL,
     "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()"),
    ("R4 id pattern", ALL, "id.exists() implies id.matches('^[A-Za-z0-9\\\\-\\\\.]{1,64}$')"),
    ("UK Core status fixed final", UKCORE, "status = 'final'"),
    ("UK Core subject 1..1", UKCORE, "subject.exists()"),
    ("UK Core effective[x] 1..1", UKCORE, "effective.exists()"),
    ("UK Core value Quantity is UCUM", UKCORE, quantity_ok("value") + " and " + quantity_ok("component.value")),
    ("UK Core recording setting coded", UKCORE,
     "extension.where(url = 'https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-RecordingSetting')"
     ".all(value.ofType(CodeableConcept).coding.where(system = "
     "'https://fhir.hl7.org.uk/CodeSystem/UKCore-RecordingSetting' and (code = 'residential' or code = 'clinical')).exists())"),
    ("vs-1", VITAL, "(effective as dateTime).toString().length() >= 8"),
    ("vs-2", VITAL, "(component.empty() and hasMember.empty()) implies (dataAbsentReason.exists() or value.exists())"),
    ("vs-3", VITAL, "component.all(value.exists() or dataAbsentReason.exists())"),
    ("ukcore-obs-vs-001", VITAL, f"code.coding.where(system = '{LOINC}').exists()"),
    ("UK Core VS LOINC slice 1..1", VITAL, f"code.coding.where(system = '{LOINC}').count() = 1"),
    ("UK Core VS SNOMED slice 1..*", VITAL, f"code.coding.where(system = '{SNOMED}').exists()"),
    ("UK Core VS category 1..1 vital-signs", VITAL,
     f"category.count() = 1 and category.coding.where(system = '{CAT}' and code = 'vital-signs').exists()"),
    ("R4 vitalsigns subject is a Patient", VITAL,
     "subject.type = 'Patient' or subject.reference.startsWith('Patient/')"),
    ("BP value[x] 0..0", ONLY("UKCore-Observation-VitalSigns-BloodPressure"), "value.empty()"),
    ("BP component 1..2, closed slicing on code.text", ONLY("UKCore-Observation-VitalSigns-BloodPressure"),
     "component.count() >= 1 and component.count() <= 2 and "
     "component.all(code.text = 'Systolic blood pressure' or code.text = 'Diastolic blood pressure') and "
     "component.where(code.text = 'Systolic blood pressure').count() = 1 and "
     "component.where(code.text = 'Diastolic blood pressure').count() <= 1"),
    ("BP SystolicBP LOINC 8480-6 mm[Hg]", ONLY("UKCore-Observation-VitalSigns-BloodPressure"),
     f"component.where(code.text = 'Systolic blood pressure').all(code.coding.where(system = '{LOINC}').code = '8480-6' "
     "and (value.empty() or value.ofType(Quantity).code = 'mm[Hg]'))"),
    ("BP DiastolicBP LOINC 8462-4 mm[Hg]", ONLY("UKCore-Observation-VitalSigns-BloodPressure"),
     f"component.where(code.text = 'Diastolic blood pressure').all(code.coding.where(system = '{LOINC}').code = '8462-4' "
     "and (value.empty() or value.ofType(Quantity).code = 'mm[Hg]'))"),
    ("InspiredOxygen interpretation/bodySite/specimen 0..0", ONLY("UKCore-Observation-InspiredOxygen"),
     "interpretation.empty() and bodySite.empty() and specimen.empty()"),
    ("InspiredOxygen unit l/min or %", ONLY("UKCore-Observation-InspiredOxygen"),
     "value.empty() or value.ofType(Quantity).code = 'l/min' or value.ofType(Quantity).code = '%'"),
    ("BloodGlucose category 1..1, unit mmol/L", ONLY("UKCore-Observation-BloodGlucose"),
     "category.count() = 1 and (value.empty() or value.ofType(Quantity).code = 'mmol/L')"),
    ("ACVPU code 1104441000000107", ONLY("UKCore-Observation-ACVPU"),
     f"code.coding.where(system = '{SNOMED}' and code = '1104441000000107').exists()"),
    ("EarlyWarningTotalScore category survey, {ScoreOf}", ONLY("UKCore-Observation-EarlyWarningTotalScore"),
     f"category.coding.where(system = '{CAT}' and code = 'survey').exists() and "
     f"value.ofType(Quantity).system = '{UCUM}' and value.ofType(Quantity).code = '{{ScoreOf}}' and "
     "component.all(value.ofType(Quantity).code = '{ScoreOf}')"),
]

# Fixed LOINC code and UCUM unit(s) per specific vital-sign profile (clinical.md §1.2).
FIXED = {
    "HeartRate": ("8867-4", ["/min"]),
    "RespirationRate": ("9279-1", ["/min"]),
    "OxygenSaturation": ("2708-6", ["%"]),
    "BodyTemperature": ("8310-5", ["Cel"]),
    "BodyWeight": ("29463-7", ["kg"]),
    "BodyHeight": ("8302-2", ["cm", "m"]),
    "BMI": ("39156-5", ["kg/m2"]),
    "BloodPressure": ("85354-9", []),
}
for name, (loinc, units) in FIXED.items():
    unit_rule = " or ".join(f"value.ofType(Quantity).code = '{u}'" for u in units) or "true"
    RULES.append((
        f"{name} LOINC {loinc}, UCUM {'/'.join(units) or '-'}",
        ONLY("UKCore-Observation-VitalSigns-" + name),
        f"code.coding.where(system = '{LOINC}').code = '{loinc}' and (value.empty() or {unit_rule})",
    ))


def check(resource):
    failures = []
    if resource.get("resourceType") != "Observation":
        return ["resourceType is not Observation"]
    profiles = resource.get("meta", {}).get("profile", [])
    if len(profiles) != 1:
        return [f"expected exactly one meta.profile, got {profiles!r}"]
    profile = profiles[0]
    for rule, applies, expr in RULES:
        if not applies(profile):
            continue
        try:
            result = evaluate(resource, expr, {"resource": resource}, R4)
        except Exception as e:  # a rule that cannot be evaluated is a failure, never a pass
            failures.append(f"{rule}: could not evaluate ({e})")
            continue
        if result != [True]:
            failures.append(f"{rule}: `{expr}` gave {result!r}")
    return failures


def main(argv):
    if not argv:
        print("usage: fhirpath_check.py FILE_OR_DIR...", file=sys.stderr)
        return 2
    files = []
    for a in argv:
        if os.path.isdir(a):
            files += [os.path.join(a, f) for f in sorted(os.listdir(a)) if f.endswith(".json")]
        else:
            files.append(a)
    if not files:
        print("fhirpath_check.py: no .json files found", file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                resource = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"fhirpath_check.py: cannot read {f}: {e}", file=sys.stderr)
            return 2
        failures = check(resource)
        if failures:
            bad += 1
            print(f"INVALID {f}: " + "; ".join(failures))
        else:
            print(f"ok {f}")
    print(f"fhirpath: {len(files) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
