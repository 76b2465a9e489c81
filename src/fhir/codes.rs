//! Terminology: every profile URL, code system, code, display and UCUM unit the mapping emits,
//! in one place so a clinical safety reviewer can read it as a table. Sources: clinical.md §1.2,
//! §1.3, §1.7, §1.8 and §2.4 (UK Core StructureDefinitions, examples and ValueSets).

use crate::reading::{Acvpu, Metric, Unit};

pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Identifier system for the Observation's own UUID, copied from the UK Core NEWS2 bundle
/// example (clinical.md §1.8).
pub const UUID_IDENTIFIER_SYSTEM: &str = "https://tools.ietf.org/html/rfc4122";
/// Our identifier system for devices: value `{gateway_id}/{device_id}` (the device id alone is a
/// serial number or a config name, unique only within one gateway).
pub const DEVICE_SYSTEM: &str = "urn:vitalgate:device";
/// Fallback patient identifier system when no NHS Number is configured: value is the gateway id.
/// A home hub serves one enrolled patient; the platform maps gateway -> patient from its
/// enrolment record. Never guessed, never a fake NHS Number.
pub const GATEWAY_PATIENT_SYSTEM: &str = "urn:vitalgate:gateway-patient";
/// Local code system used only where no verified SNOMED CT / LOINC code exists (perfusion index).
pub const VITALGATE_METRIC_SYSTEM: &str = "urn:vitalgate:metric";
pub const RECORDING_SETTING_URL: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-RecordingSetting";
pub const RECORDING_SETTING_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-RecordingSetting";

/// Canonical base of every UK Core StructureDefinition (clinical.md §1.2).
pub const SD_BASE: &str = "https://fhir.hl7.org.uk/StructureDefinition/";

/// A coding: system, code, display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
}

const fn sct(code: &'static str, display: &'static str) -> Code {
    Code {
        system: SNOMED,
        code,
        display,
    }
}
const fn loinc(code: &'static str, display: &'static str) -> Code {
    Code {
        system: LOINC,
        code,
        display,
    }
}

/// Observation category codes used (all from `observation-category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    VitalSigns,
    Laboratory,
    Survey,
    Therapy,
    Exam,
}

impl Category {
    pub fn code(self) -> Code {
        let (code, display) = match self {
            Category::VitalSigns => ("vital-signs", "Vital Signs"),
            Category::Laboratory => ("laboratory", "Laboratory"),
            Category::Survey => ("survey", "Survey"),
            Category::Therapy => ("therapy", "Therapy"),
            Category::Exam => ("exam", "Exam"),
        };
        Code {
            system: OBSERVATION_CATEGORY,
            code,
            display,
        }
    }
}

/// How one metric becomes a stand-alone Observation.
#[derive(Debug, Clone, Copy)]
pub struct MetricCodes {
    /// Full canonical URL of the profile claimed in `meta.profile`.
    pub profile: &'static str,
    pub category: Category,
    /// `code.coding`, SNOMED CT first (as the UK Core examples order them).
    pub codings: &'static [Code],
    /// `code.text`.
    pub text: &'static str,
}

pub const VITAL_SIGNS_PROFILE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-VitalSigns";
pub const BP_PROFILE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-VitalSigns-BloodPressure";
pub const NEWS2_PROFILE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-EarlyWarningTotalScore";
pub const INSPIRED_OXYGEN_PROFILE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-InspiredOxygen";

macro_rules! profile {
    ($name:literal) => {
        concat!("https://fhir.hl7.org.uk/StructureDefinition/", $name)
    };
}

/// The stand-alone mapping of each metric. Blood pressure systolic/diastolic normally travel as
/// a panel ([`BP_PANEL`], [`bp_component`]); these entries are for a lone diastolic or mean.
/// Inspired oxygen and ACVPU have value-dependent codes: see [`inspired_oxygen`], [`acvpu_value`].
pub fn metric(m: Metric) -> MetricCodes {
    let vs = Category::VitalSigns;
    match m {
        Metric::HeartRate => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-HeartRate"),
            category: vs,
            codings: const {
                &[
                    sct("364075005", "Heart rate"),
                    loinc("8867-4", "Heart rate"),
                ]
            },
            text: "Heart rate",
        },
        // Pulse rate is heart rate measured at a peripheral artery: SNOMED 78564009 sits under
        // the UKCore-HeartRate root 364075005 and is the NHSE virtual-wards pulse code (§2.4).
        Metric::PulseRate => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-HeartRate"),
            category: vs,
            codings: const { &[sct("78564009", "Pulse rate"), loinc("8867-4", "Heart rate")] },
            text: "Pulse rate",
        },
        Metric::Spo2 => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-OxygenSaturation"),
            category: vs,
            codings: const {
                &[
                    sct("431314004", "Peripheral oxygen saturation"),
                    loinc("2708-6", "Oxygen saturation in Arterial blood"),
                ]
            },
            text: "Oxygen saturation",
        },
        Metric::RespiratoryRate => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-RespirationRate"),
            category: vs,
            codings: const {
                &[
                    sct("86290005", "Respiratory rate"),
                    loinc("9279-1", "Respiratory rate"),
                ]
            },
            text: "Respiratory rate",
        },
        Metric::BodyTemperature => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-BodyTemperature"),
            category: vs,
            codings: const {
                &[
                    sct("386725007", "Body temperature"),
                    loinc("8310-5", "Body temperature"),
                ]
            },
            text: "Body temperature",
        },
        Metric::SystolicBp => MetricCodes {
            profile: VITAL_SIGNS_PROFILE,
            category: vs,
            codings: const { &[SYSTOLIC_SCT, SYSTOLIC_LOINC] },
            text: SYSTOLIC_TEXT,
        },
        Metric::DiastolicBp => MetricCodes {
            profile: VITAL_SIGNS_PROFILE,
            category: vs,
            codings: const { &[DIASTOLIC_SCT, DIASTOLIC_LOINC] },
            text: DIASTOLIC_TEXT,
        },
        // Mean BP cannot be a component of the UK Core BP panel (closed slicing on code.text,
        // clinical.md §1.3), so it is its own vital sign; 8478-0 is in observation-vitalsignresult.
        Metric::MeanBp => MetricCodes {
            profile: VITAL_SIGNS_PROFILE,
            category: vs,
            codings: const {
                &[
                    sct("6797001", "Mean blood pressure"),
                    loinc("8478-0", "Mean blood pressure"),
                ]
            },
            text: "Mean blood pressure",
        },
        Metric::BodyWeight => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-BodyWeight"),
            category: vs,
            codings: const {
                &[
                    sct("27113001", "Body weight"),
                    loinc("29463-7", "Body weight"),
                ]
            },
            text: "Body weight",
        },
        Metric::BodyHeight => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-BodyHeight"),
            category: vs,
            codings: const {
                &[
                    sct("50373000", "Body height measure"),
                    loinc("8302-2", "Body height"),
                ]
            },
            text: "Body height",
        },
        Metric::Bmi => MetricCodes {
            profile: profile!("UKCore-Observation-VitalSigns-BMI"),
            category: vs,
            codings: const {
                &[
                    sct("60621009", "Body mass index"),
                    loinc("39156-5", "Body mass index (BMI) [Ratio]"),
                ]
            },
            text: "Body mass index",
        },
        // UKCore-Observation-BloodGlucose: no LOINC required, category not fixed (§1.2); a
        // capillary meter reading is a point-of-care test, hence `laboratory`.
        Metric::BloodGlucose => MetricCodes {
            profile: profile!("UKCore-Observation-BloodGlucose"),
            category: Category::Laboratory,
            codings: const { &[sct("997671000000106", "Blood glucose level")] },
            text: "Blood glucose level",
        },
        // No UK Core profile and no verified SNOMED CT / LOINC code for perfusion index: generic
        // UKCore-Observation with a local code, `exam` category (not a vital sign in R4's list).
        Metric::PerfusionIndex => MetricCodes {
            profile: profile!("UKCore-Observation"),
            category: Category::Exam,
            codings: const {
                &[Code {
                    system: VITALGATE_METRIC_SYSTEM,
                    code: "perfusion_index",
                    display: "Perfusion index",
                }]
            },
            text: "Perfusion index",
        },
        Metric::InspiredOxygen => inspired_oxygen(true),
        Metric::Acvpu => MetricCodes {
            profile: profile!("UKCore-Observation-ACVPU"),
            category: Category::Survey,
            codings: const {
                &[sct(
                    "1104441000000107",
                    "ACVPU (Alert Confusion Voice Pain Unresponsive) scale score",
                )]
            },
            text: "ACVPU",
        },
    }
}

/// Inspired oxygen (clinical.md §1.7): `on_oxygen` -> 371825009 Patient on oxygen, category
/// `therapy`, with the flow as value; room air (flow 0) -> 722742002 Breathing room air, category
/// `exam`, no value, as in the UK Core examples.
pub fn inspired_oxygen(on_oxygen: bool) -> MetricCodes {
    if on_oxygen {
        MetricCodes {
            profile: INSPIRED_OXYGEN_PROFILE,
            category: Category::Therapy,
            codings: const { &[sct("371825009", "Patient on oxygen")] },
            text: "Patient on oxygen",
        }
    } else {
        MetricCodes {
            profile: INSPIRED_OXYGEN_PROFILE,
            category: Category::Exam,
            codings: const { &[sct("722742002", "Breathing room air")] },
            text: "Breathing room air",
        }
    }
}

/// Inspired oxygen whose flow the device could not give: neither SNOMED code of the value set
/// may be asserted (we do not know whether the patient is on oxygen), so the code is LOINC
/// 3151-8 Inhaled oxygen flow rate, with a `dataAbsentReason`.
pub const INSPIRED_OXYGEN_UNKNOWN: MetricCodes = MetricCodes {
    profile: INSPIRED_OXYGEN_PROFILE,
    category: Category::Therapy,
    codings: const { &[loinc("3151-8", "Inhaled oxygen flow rate")] },
    text: "Inhaled oxygen flow rate",
};

/// ACVPU value codes (UKCore-ACVPU value set, clinical.md §1.2).
pub fn acvpu_value(a: Acvpu) -> Code {
    match a {
        Acvpu::A => sct("248234008", "Mentally alert"),
        Acvpu::C => sct("130987000", "Acute confusion"),
        Acvpu::V => sct("300202002", "Responds to voice"),
        Acvpu::P => sct("450847001", "Responds to pain"),
        Acvpu::U => sct("422768004", "Unresponsive"),
    }
}

/// Blood pressure panel code (clinical.md §1.8).
pub const BP_PANEL: MetricCodes = MetricCodes {
    profile: BP_PROFILE,
    category: Category::VitalSigns,
    codings: const {
        &[
            sct("75367002", "Blood pressure"),
            loinc("85354-9", "Blood pressure panel with all children optional"),
        ]
    },
    text: "Blood pressure",
};

/// The exact component `code.text` strings: the UK Core BP slicing is closed and discriminates
/// on them (clinical.md §1.3), so they are mandatory to the letter.
pub const SYSTOLIC_TEXT: &str = "Systolic blood pressure";
pub const DIASTOLIC_TEXT: &str = "Diastolic blood pressure";
const SYSTOLIC_SCT: Code = sct("72313002", "Systolic arterial pressure");
const SYSTOLIC_LOINC: Code = loinc("8480-6", "Systolic blood pressure");
const DIASTOLIC_SCT: Code = sct("1091811000000102", "Diastolic arterial pressure");
const DIASTOLIC_LOINC: Code = loinc("8462-4", "Diastolic blood pressure");

/// `(codings, code.text)` of a BP panel component, `None` for metrics that are not one.
pub fn bp_component(m: Metric) -> Option<(&'static [Code], &'static str)> {
    match m {
        Metric::SystolicBp => Some((&[SYSTOLIC_SCT, SYSTOLIC_LOINC], SYSTOLIC_TEXT)),
        Metric::DiastolicBp => Some((&[DIASTOLIC_SCT, DIASTOLIC_LOINC], DIASTOLIC_TEXT)),
        _ => None,
    }
}

/// UCUM unit display strings as the UK Core SDs fix them (`unit` element).
pub fn unit_display(u: Unit) -> &'static str {
    match u {
        Unit::PerMinute => "per minute",
        Unit::Percent => "percent",
        Unit::Celsius => "degree Celsius",
        Unit::Fahrenheit => "degree Fahrenheit",
        Unit::MmHg => "millimeter of mercury",
        Unit::KiloPascal => "kilopascal",
        Unit::Kilogram => "kilogram",
        Unit::Pound => "pound",
        Unit::Centimetre => "centimeter",
        Unit::Metre => "meter",
        Unit::Inch => "inch",
        Unit::KgPerM2 => "kilogram / (meter ^ 2)",
        Unit::MmolPerL => "millimoles per litre",
        Unit::MgPerDl => "milligram per deciliter",
        Unit::LitrePerMinute => "litre per minute",
    }
}

/// NEWS2 total (clinical.md §2.4), category `survey`, Quantity `{ScoreOf}`.
pub const NEWS2_TOTAL: Code = sct(
    "1104051000000101",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score",
);
pub const NEWS2_RR: Code = sct(
    "1104301000000104",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - respiration rate score",
);
pub const NEWS2_SPO2_SCALE1: Code = sct(
    "1104311000000102",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - oxygen saturation scale 1 score",
);
pub const NEWS2_SPO2_SCALE2: Code = sct(
    "1104321000000108",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - oxygen saturation scale 2 score",
);
pub const NEWS2_AIR_OXYGEN: Code = sct(
    "1104331000000105",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - air or oxygen score",
);
pub const NEWS2_SYSTOLIC: Code = sct(
    "1104341000000101",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - systolic blood pressure score",
);
pub const NEWS2_PULSE: Code = sct(
    "1104351000000103",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - pulse score",
);
pub const NEWS2_CONSCIOUSNESS: Code = sct(
    "1104361000000100",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - consciousness score",
);
pub const NEWS2_TEMPERATURE: Code = sct(
    "1104371000000107",
    "Royal College of Physicians NEWS2 (National Early Warning Score 2) - temperature score",
);
