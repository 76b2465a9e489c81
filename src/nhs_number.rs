//! NHS Number (Modulus 11). Filled in with the FHIR work.
