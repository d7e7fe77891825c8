#!/usr/bin/env node
// Parse DICOM files with dcmjs (the library OHIF uses) and report, one JSON line per file,
// what OHIF's SR viewer would find in them. See README.md.
//
//   node ohif_check.mjs <file.dcm>...
//
// Exit status: 0 when every file was read (whatever the findings), 2 on a usage error.
import { readFileSync } from "node:fs";
import dcmjs from "dcmjs";

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

const SR_CLASSES = new Set([
  "1.2.840.10008.5.1.4.1.1.88.11", // Basic Text SR
  "1.2.840.10008.5.1.4.1.1.88.22", // Enhanced SR
  "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR
  "1.2.840.10008.5.1.4.1.1.88.34", // Comprehensive 3D SR
]);

// The concepts OHIF's cornerstone-dicom-sr extension looks up (CodeNameCodeSequenceValues).
const CODES = {
  report: "126000", // Imaging Measurement Report (root)
  library: "111028", // Image Library
  libraryGroup: "126200", // Image Library Group
  measurements: "126010", // Imaging Measurements
  group: "125007", // Measurement Group
  trackingId: "112039", // Tracking Identifier
  trackingUid: "112040", // Tracking Unique Identifier
  finding: "121071", // Finding
};

// dcmjs gives a one-item sequence as an array with accessors, OHIF's metadata as an object.
const asArray = (seq) => (seq === undefined || seq === null ? [] : Array.isArray(seq) ? seq : [seq]);
const first = (seq) => asArray(seq)[0];
const conceptOf = (item) => {
  const code = first(item?.ConceptNameCodeSequence);
  return code
    ? { value: code.CodeValue, scheme: code.CodingSchemeDesignator, meaning: code.CodeMeaning }
    : null;
};
const isConcept = (value) => (item) => conceptOf(item)?.value === value;

function readDataset(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const message = DicomMessage.readFile(buffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(message.dict);
  const meta = DicomMetaDictionary.naturalizeDataset(message.meta);
  return { dataset, meta };
}

// The TID 1500 structure OHIF reads; `fatal` lists what makes OHIF refuse or fail to load the SR
// (getSopClassHandlerModule: _getDisplaySetsFromSeries, _getReferencedImagesList,
// _getMeasurements); `legacy` what older OHIF 3.x loaders throw on and newer ones skip.
function srStructure(ds) {
  const root = conceptOf(ds);
  const content = asArray(ds.ContentSequence);
  const fatal = [];
  const legacy = [];
  const out = {
    root_concept: root,
    template: first(ds.ContentTemplateSequence)?.TemplateIdentifier ?? null,
    image_library: false,
    image_library_group: false,
    library_images: [],
    imaging_measurements: false,
    groups: [],
  };
  if (root?.value !== CODES.report) {
    fatal.push(`root concept is ${root?.value ?? "missing"}, not ${CODES.report}: OHIF shows "not supported"`);
  }
  const library = content.find(isConcept(CODES.library));
  if (library) {
    out.image_library = true;
    const libraryGroup = asArray(library.ContentSequence).find(isConcept(CODES.libraryGroup));
    if (libraryGroup) {
      out.image_library_group = true;
      for (const item of asArray(libraryGroup.ContentSequence)) {
        for (const ref of asArray(item.ReferencedSOPSequence)) {
          if (ref.ReferencedSOPClassUID) out.library_images.push(ref.ReferencedSOPInstanceUID);
        }
      }
    } else {
      fatal.push(`Image Library has no Image Library Group ${CODES.libraryGroup}`);
    }
  } else {
    fatal.push(`no Image Library ${CODES.library}`);
  }
  const measurements = content.find(isConcept(CODES.measurements));
  if (measurements) {
    out.imaging_measurements = true;
    const groups = asArray(measurements.ContentSequence).filter(isConcept(CODES.group));
    groups.forEach((group, index) => {
      const items = asArray(group.ContentSequence);
      const trackingId = items.find(isConcept(CODES.trackingId));
      const trackingUid = items.find(isConcept(CODES.trackingUid));
      const finding = items.find(isConcept(CODES.finding));
      const nums = items.filter((i) => i.ValueType === "NUM");
      const bareNums = nums.filter((i) => asArray(i.ContentSequence).length === 0);
      const code = first(finding?.ConceptCodeSequence);
      out.groups.push({
        tracking_identifier: trackingId?.TextValue ?? null,
        tracking_identifier_value_type: trackingId?.ValueType ?? null,
        tracking_uid: trackingUid?.UID ?? null,
        tracking_uid_value_type: trackingUid?.ValueType ?? null,
        finding: code ? { value: code.CodeValue, scheme: code.CodingSchemeDesignator, meaning: code.CodeMeaning } : null,
        num_items: nums.length,
        num_items_without_scoord: bareNums.length,
        images: items.filter((i) => i.ValueType === "IMAGE").length,
        scoords: items.filter((i) => i.ValueType === "SCOORD" || i.ValueType === "SCOORD3D").length,
      });
      if (!trackingUid?.UID) fatal.push(`measurement group ${index}: no Tracking Unique Identifier ${CODES.trackingUid}`);
      if (trackingId?.TextValue === undefined) fatal.push(`measurement group ${index}: no Tracking Identifier ${CODES.trackingId}`);
      if (bareNums.length) {
        legacy.push(`measurement group ${index}: ${bareNums.length} NUM item(s) without a SCOORD content sequence`);
      }
    });
    if (!groups.length) fatal.push(`Imaging Measurements has no Measurement Group ${CODES.group}`);
  } else {
    fatal.push(`no Imaging Measurements ${CODES.measurements}`);
  }
  return { ...out, ohif_fatal: fatal, ohif_legacy: legacy };
}

// dcmjs' own TID 1500 reader (the Cornerstone adapters' MeasurementReport.generateToolState).
// It finds groups by code meaning, and reads a tool's state only for groups whose Tracking
// Identifier names a Cornerstone tool; ours name findings, so every tool list comes back empty.
function adapterRead(ds) {
  const result = {};
  for (const name of ["Cornerstone", "Cornerstone3D"]) {
    const report = dcmjs.adapters?.[name]?.MeasurementReport;
    if (!report?.generateToolState) {
      result[name] = { ok: false, error: "adapter not in this dcmjs" };
      continue;
    }
    try {
      const state = name === "Cornerstone"
        ? report.generateToolState(ds)
        : report.generateToolState(ds, {}, () => [0, 0, 0], { get: () => undefined });
      const tools = Object.fromEntries(Object.entries(state).map(([k, v]) => [k, v.length]));
      result[name] = { ok: true, tools };
    } catch (error) {
      result[name] = { ok: false, error: String(error?.message ?? error) };
    }
  }
  return result;
}

function check(path) {
  let parsed;
  try {
    parsed = readDataset(path);
  } catch (error) {
    return { file: path, parsed: false, error: String(error?.message ?? error) };
  }
  const { dataset: ds, meta } = parsed;
  const sopClass = ds.SOPClassUID ?? null;
  const out = {
    file: path,
    parsed: true,
    transfer_syntax: meta.TransferSyntaxUID ?? null,
    sop_class_uid: sopClass,
    sop_instance_uid: ds.SOPInstanceUID ?? null,
    modality: ds.Modality ?? null,
    study_uid: ds.StudyInstanceUID ?? null,
    series_uid: ds.SeriesInstanceUID ?? null,
    patient_id: ds.PatientID ?? null,
    is_sr: SR_CLASSES.has(sopClass),
  };
  if (out.is_sr) {
    out.sr = srStructure(ds);
    out.sr.adapters = adapterRead(ds);
  }
  return out;
}

const files = process.argv.slice(2);
if (!files.length) {
  console.error("usage: node ohif_check.mjs <file.dcm>...");
  process.exit(2);
}
// dcmjs and its adapters log to the console; keep stdout for the JSON lines only.
const write = process.stdout.write.bind(process.stdout);
console.log = console.info = console.warn = console.debug = (...args) => process.stderr.write(args.join(" ") + "\n");
dcmjs.log?.setLevel?.("error");
for (const file of files) write(JSON.stringify(check(file)) + "\n");
