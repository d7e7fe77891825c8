"""Real sample images from pydicom-data, and a study built from them for demos and tests.

Sources (``pydicom-data==1.0.0``, MIT; see ``tests/data/README.md``):
``RG1_UNCR.dcm`` a real adult chest CR, ``RG3_UNCR.dcm`` a real CR of a distal
tibia, ``693_UNCR.dcm`` a real 512x512 head CT slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.core.errors import ServiceError


def sample_path(name: str) -> Path:
    """Path of a pydicom-data sample file.

    Raises
    ------
    ServiceError
        If pydicom-data is not installed or lacks the file.
    """
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name)
    except Exception as exc:  # pydicom-data missing
        raise ServiceError(f"sample image {name} unavailable: {exc}") from exc
    if not path:
        raise ServiceError(f"sample image {name} not found: pip install pydicom-data")
    return Path(str(path))


@dataclass
class MixedStudy:
    """One study as a hospital's modalities would send it: chest CR, head CT series, tibia CR."""

    study_uid: str
    patient_name: str
    patient_id: str
    files: list[Path] = field(default_factory=list)
    chest: list[str] = field(default_factory=list)
    ct: list[str] = field(default_factory=list)
    bone: list[str] = field(default_factory=list)


def mixed_study(directory: Path, ct_slices: int = 4) -> MixedStudy:
    """Write a study of real images from pydicom-data under one Study Instance UID.

    - ``RG1_UNCR.dcm``, a real adult chest CR (PA), as one series;
    - ``693_UNCR.dcm``, a real 512x512 head CT slice, as a series of ``ct_slices``
      slices 5 mm apart, sent in shuffled order, with BodyPartExamined HEAD (the
      source slice carries none) so the head CT rules see what a scanner sends;
    - ``RG3_UNCR.dcm``, a real CR of a distal tibia (EXTREMITY), as one series.
    Patient attributes are replaced by one synthetic patient (one study, one patient).
    """
    directory.mkdir(parents=True, exist_ok=True)
    study = MixedStudy(generate_uid(), "E2E^MIXED^PATIENT", "E2E-MIXED-0042")

    def write(source: str, series_uid: str, name: str, **attrs: object) -> str:
        ds = dcmread(sample_path(source))
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        path = directory / name
        ds.save_as(path, enforce_file_format=True)
        study.files.append(path)
        return str(ds.SOPInstanceUID)

    study.chest.append(write("RG1_UNCR.dcm", generate_uid(), "chest.dcm", SeriesNumber=1))
    ct_series = generate_uid()
    for k in (2, 0, 3, 1, *range(4, ct_slices))[:ct_slices]:
        study.ct.append(
            write(
                "693_UNCR.dcm",
                ct_series,
                f"ct{k}.dcm",
                SeriesNumber=2,
                InstanceNumber=k + 1,
                BodyPartExamined="HEAD",
                ImagePositionPatient=[-122.5, -112.4, 47.0 + 5.0 * k],
            )
        )
    study.bone.append(write("RG3_UNCR.dcm", generate_uid(), "tibia.dcm", SeriesNumber=3))
    return study
