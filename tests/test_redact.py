"""PHI-free reasons, exceptions, warnings and log records (dicom_node.core.redact).

The values are the ones the issue saw leak: a patient ID where Patient's Sex
belongs, a patient name, a bad birth date, quoted by pydicom's and highdicom's
texts. Library texts are produced by the real libraries where they can be.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset, config
from pydicom.valuerep import validate_value

from dicom_node.core.errors import PixelDataError
from dicom_node.core.redact import (
    LibraryRecordFilter,
    captured_library_warnings,
    frames,
    keywords_in,
    reason_for,
    scrubbed,
    shown_value,
)

NAME = "Doe^Jane"
PATIENT_ID = "PID-4711"
SECRETS = ("Doe", "Jane", "4711", "19xx")


def assert_no_phi(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {text!r}"


def library_error() -> ValueError:
    """The exception pydicom raises for a patient ID in Patient's Sex (it quotes the value)."""
    try:
        validate_value("CS", PATIENT_ID, config.RAISE)
    except ValueError as exc:
        assert PATIENT_ID in str(exc)
        return exc
    raise AssertionError("pydicom accepted an invalid CS value")


def test_keywords_are_found_outside_quotes_and_in_tags() -> None:
    assert keywords_in("(0010,0040) Patient's Sex: 'Doe^Jane'") == ["PatientSex"]
    assert keywords_in("Value of PatientSexValues is not 'PatientName'") == ["PatientSex"]
    assert keywords_in('WindowCenter and WindowWidth differ: "Rows"') == [
        "WindowCenter",
        "WindowWidth",
    ]
    assert keywords_in("nothing here") == []


def test_reasons_name_class_and_keywords_never_values() -> None:
    assert reason_for(library_error()) == "ValueError"
    assert reason_for(library_error(), "PatientSex") == "ValueError (PatientSex)"
    try:
        Dataset().Rows  # noqa: B018
    except AttributeError as exc:
        assert reason_for(exc) == "AttributeError (Rows)"
    quoted = ValueError(f"A (0010,0030) 'Patient Birth Date' value of '19xx0101' for {NAME}")
    assert reason_for(quoted) == "ValueError (PatientBirthDate)"
    ours = PixelDataError("Rows (0028,0010) is missing\x00")  # our own texts are kept
    assert reason_for(ours) == "Rows (0028,0010) is missing"
    assert len(reason_for(PixelDataError("x" * 5000))) <= 1000


def test_a_scrubbed_exception_keeps_its_type_and_loses_every_value() -> None:
    def fails() -> None:
        try:
            raise KeyError(NAME)
        except KeyError as inner:
            raise library_error() from inner

    with pytest.raises(ValueError) as caught:
        try:
            fails()
        except ValueError as exc:
            exc.add_note(f"while reading {PATIENT_ID}")
            raise scrubbed(exc) from None
    exc = caught.value
    assert exc.args == ("ValueError",)
    text = "".join(traceback.format_exception(exc))
    assert "ValueError" in text and "fails" in text  # the frames are still there
    assert_no_phi(text)
    assert_no_phi(frames(exc))


def test_only_plausible_coded_terms_are_shown() -> None:
    for term in ("CT", "CHEST", "MONOCHROME2", "YBR_FULL_422", "PALETTE COLOR"):
        assert shown_value(term) == term
    for value in (PATIENT_ID, NAME, "PID4711", "19550101", "chest", "", None, 42, "A" * 17):
        assert shown_value(value) is None


def test_captured_block_redacts_library_records_and_warnings(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    reading = config.settings.reading_validation_mode
    factory = logging.getLogRecordFactory()
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with captured_library_warnings():
            assert config.settings.reading_validation_mode == config.IGNORE
            ds = Dataset()
            ds.PatientSex = PATIENT_ID  # pydicom warns and logs, quoting the value
            logging.getLogger("highdicom.sr.sop").warning("PatientName %r is invalid", NAME)
            logging.getLogger("pydicom").error("bad", exc_info=library_error())
            warnings.warn_explicit(
                f"Value '{NAME}' of PatientName", UserWarning, "/x/highdicom/sr/sop.py", 7
            )
            warnings.warn(f"(0010,0040) holds {PATIENT_ID}", RuntimeWarning, stacklevel=1)
    assert config.settings.reading_validation_mode == reading  # undone
    assert logging.getLogRecordFactory() is factory
    assert outside == []  # nothing was shown
    said = [r.getMessage() for r in caplog.records]
    out, err = capfd.readouterr()
    assert_no_phi(" ".join(said) + out + err)
    assert any("keywords: PatientName" in line for line in said)  # highdicom's, named
    assert any("exception: ValueError" in line for line in said)
    assert any("RuntimeWarning" in line and "PatientSex" in line for line in said)
    assert all(r.exc_info is None for r in caplog.records)


def test_the_filter_redacts_what_reaches_a_handler(tmp_path: Path) -> None:
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.addFilter(LibraryRecordFilter())
    logger = logging.getLogger("pydicom.test_redact")
    logger.addHandler(handler)
    try:
        logger.warning("Invalid value for VR CS: %r (PatientSex)", PATIENT_ID)
        logging.getLogger("workers.test_redact").addHandler(handler)
        logging.getLogger("workers.test_redact").warning("study %s", "1.2.3")  # ours: kept
    finally:
        logger.removeHandler(handler)
        logging.getLogger("workers.test_redact").removeHandler(handler)
        handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert_no_phi(text)
    assert "keywords: PatientSex" in text and "study 1.2.3" in text


def test_process_wide_capture_in_a_worker_like_process(tmp_path: Path) -> None:
    """What a worker process gets from one call at start: no value on stderr, ever."""
    source = tmp_path / "odd.dcm"
    code = f"""
import logging, warnings
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from dicom_node.core.redact import capture_library_warnings
logging.basicConfig(level=logging.DEBUG)
capture_library_warnings()
capture_library_warnings()  # idempotent
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
ds.PatientSex = {PATIENT_ID!r}
ds.PatientName = {NAME + "=a=b=c"!r}
ds.save_as({str(source)!r}, enforce_file_format=True)
back = dcmread({str(source)!r})
print(str(back.PatientSex) == {PATIENT_ID!r})
logging.getLogger("highdicom.base").info("copy %s", {NAME!r})
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert_no_phi(out.stderr)
    assert "message withheld" in out.stderr
