"""What the SCP accepts: decodable transfer syntaxes, retired storage classes, the sender's order.

Every transfer syntax in ``ACCEPTED_TRANSFER_SYNTAXES`` is proven here with a
real sample: pydicom's own test files, pydicom-data's, one made by dcmtk's
``dcmcjpeg`` (JPEG lossless, selection value 6) and three HTJ2K codestreams made
by OpenJPH (``tests/data/README.md``). Each decodes with pydicom's default
decoding (what the worker uses) and with every plugin the constant names, and
each goes through a real association into the spool unchanged.

The SCP runs as in test_scp, with the FAKE ``RecordingPublisher``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom import uid as pydicom_uid
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import UID, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core import dimse
from dicom_node.core.settings import Settings
from dicom_node.ingest.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    RETIRED_STORAGE_CLASSES,
    preferred_order,
    storage_sop_classes,
)
from dicom_node.ingest.header import is_image_storage
from dicom_node.ingest.scp import StoreSCP, build_ae
from tests.conftest import dcmtk_env, free_port, require_tool, with_new_uids
from tests.test_scp import RecordingPublisher

DATA = Path(__file__).parent / "data"
CALLED = "DICOM_NODE"
CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
J2K_LOSSLESS = str(pydicom_uid.JPEG2000Lossless)
J2K = str(pydicom_uid.JPEG2000)
EXPLICIT = str(pydicom_uid.ExplicitVRLittleEndian)
IMPLICIT = str(pydicom_uid.ImplicitVRLittleEndian)
RLE = str(pydicom_uid.RLELossless)
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_XL = ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")
NOT_ACCEPTED = (
    JPEG_EXTENDED,
    *JPEG_XL,
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 multi-component (lossless)
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
)
ACCEPTED = [str(s.uid) for s in ACCEPTED_TRANSFER_SYNTAXES]

# pydicom's test files: (file, True when its pixels are MR_small.dcm's, bit for bit).
PYDICOM_FILES: dict[str, tuple[str, bool]] = {
    str(pydicom_uid.ExplicitVRLittleEndian): ("MR_small.dcm", True),
    str(pydicom_uid.ImplicitVRLittleEndian): ("MR_small_implicit.dcm", True),
    str(pydicom_uid.DeflatedExplicitVRLittleEndian): ("image_dfl.dcm", False),
    str(pydicom_uid.ExplicitVRBigEndian): ("MR_small_bigendian.dcm", True),
    str(pydicom_uid.RLELossless): ("MR_small_RLE.dcm", True),
    str(pydicom_uid.JPEGLosslessSV1): ("JPEG-LL.dcm", False),
    str(pydicom_uid.JPEGLSLossless): ("MR_small_jpeg_ls_lossless.dcm", True),
    str(pydicom_uid.JPEGLSNearLossless): ("JPEGLSNearLossless_16.dcm", False),
    str(pydicom_uid.JPEG2000Lossless): ("MR_small_jp2klossless.dcm", True),
    str(pydicom_uid.JPEG2000): ("JPEG2000.dcm", False),
    str(pydicom_uid.JPEGBaseline8Bit): ("SC_rgb_jpeg_dcmtk.dcm", False),
}
# OpenJPH codestreams of htj2k_pattern(): (file, max difference from the pattern).
HTJ2K_FILES: dict[str, tuple[str, int]] = {
    str(pydicom_uid.HTJ2KLossless): ("htj2k_lossless.j2c", 0),
    str(pydicom_uid.HTJ2KLosslessRPCL): ("htj2k_rpcl.j2c", 0),
    str(pydicom_uid.HTJ2K): ("htj2k_lossy.j2c", 64),  # irreversible, qstep 0.01: 12-bit, ±1.6 %
}


@dataclass(frozen=True)
class Sample:
    """A real instance in one transfer syntax, and what its pixels must decode to."""

    path: Path
    reference: np.ndarray | None = None
    tolerance: int = 0


def htj2k_pattern() -> np.ndarray:
    """The 48×64 12-bit image the committed HTJ2K codestreams encode (tests/data/README.md)."""
    y, x = np.mgrid[0:48, 0:64]
    return ((x * 61 + y * 37 + (x * y) % 29) % 4096).astype(np.uint16)


def _htj2k_instance(syntax: str, codestream: bytes, target: Path) -> Path:
    """Wrap an HTJ2K codestream in a Secondary Capture instance (PS3.5 A.4, F.4)."""
    ds = Dataset()
    ds.SOPClassUID = pydicom_uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 48, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if syntax == str(pydicom_uid.HTJ2K):
        ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    """One sample per transfer syntax we have one for, each under new UIDs."""
    directory = tmp_path_factory.mktemp("samples")
    mr = dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    found: dict[str, Sample] = {}
    for syntax, (name, same_as_mr) in PYDICOM_FILES.items():
        path = with_new_uids(Path(get_testdata_file(name)), directory / name)
        found[syntax] = Sample(path, mr if same_as_mr else None)
    # JPEG lossless with a predictor other than 1 (dcmcjpeg's default, selection value 6).
    sv6 = directory / "MR_small_jpeg_lossless_sv6.dcm"
    subprocess.run(
        [require_tool("dcmcjpeg"), "+el", get_testdata_file("MR_small.dcm"), str(sv6)],
        check=True,
        capture_output=True,
    )
    found[str(pydicom_uid.JPEGLossless)] = Sample(with_new_uids(sv6, sv6), mr)
    for syntax, (name, tolerance) in HTJ2K_FILES.items():
        path = _htj2k_instance(syntax, (DATA / name).read_bytes(), directory / f"{name}.dcm")
        found[syntax] = Sample(path, htj2k_pattern(), tolerance)
    # What we do not accept: the 12-bit JPEG Extended file.
    found[JPEG_EXTENDED] = Sample(
        with_new_uids(Path(get_testdata_file("JPEG-lossy.dcm")), directory / "JPEG-lossy.dcm")
    )
    return found


def _sample(samples: dict[str, Sample], syntax: str) -> Sample:
    if syntax not in samples:
        pytest.fail(
            f"{syntax} ({UID(syntax).name}) is accepted but has no sample to prove it decodes"
        )
    return samples[syntax]


def _check_pixels(sample: Sample, decoded: np.ndarray) -> None:
    if sample.reference is None:
        return
    assert decoded.shape == sample.reference.shape
    difference = np.abs(decoded.astype(np.int64) - sample.reference.astype(np.int64))
    assert int(difference.max()) <= sample.tolerance


@pytest.mark.parametrize("syntax", ACCEPTED, ids=[UID(uid).keyword or uid for uid in ACCEPTED])
def test_every_accepted_syntax_decodes(samples: dict[str, Sample], syntax: str) -> None:
    accepted = next(s for s in ACCEPTED_TRANSFER_SYNTAXES if s.uid == syntax)
    sample = _sample(samples, syntax)
    ds = dcmread(sample.path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    decoded = pixel_array(ds)  # what the worker's decode step calls
    assert decoded.shape[:2] == (ds.Rows, ds.Columns)
    _check_pixels(sample, decoded)
    for plugin in accepted.decoders:  # each decoder the constant names really decodes it
        assert np.array_equal(pixel_array(ds, decoding_plugin=plugin), decoded), plugin


def test_not_accepted_syntaxes_do_not_decode_here(samples: dict[str, Sample]) -> None:
    assert not set(NOT_ACCEPTED) & set(ACCEPTED)
    # The 12-bit JPEG Extended sample: no installed plugin decodes it. If this
    # starts to pass, a permissive decoder has arrived: accept the syntax again.
    with pytest.raises(RuntimeError, match="12-bit precision"):
        pixel_array(dcmread(samples[JPEG_EXTENDED].path))


def test_lossless_compressed_first_then_the_senders_order() -> None:
    ours = ACCEPTED
    assert preferred_order([J2K_LOSSLESS, EXPLICIT], ours)[0] == J2K_LOSSLESS
    assert preferred_order([EXPLICIT, J2K_LOSSLESS], ours)[0] == J2K_LOSSLESS
    assert preferred_order([EXPLICIT, IMPLICIT], ours)[0] == EXPLICIT
    assert preferred_order([IMPLICIT, EXPLICIT], ours)[0] == IMPLICIT
    assert preferred_order([J2K, EXPLICIT], ours)[0] == J2K  # lossy: the sender's order
    assert preferred_order([J2K, EXPLICIT, RLE, J2K_LOSSLESS], ours)[:4] == [
        RLE,
        J2K_LOSSLESS,
        J2K,
        EXPLICIT,
    ]
    assert preferred_order([*JPEG_XL, EXPLICIT], ours)[0] == EXPLICIT
    assert sorted(preferred_order([JPEG_XL[0]], ours)) == sorted(ours)  # a permutation of ours


def test_ae_supports_all_storage_classes_with_the_accepted_syntaxes(tmp_path: Path) -> None:
    ae = build_ae(Settings(data_dir=tmp_path, host="127.0.0.1", port=free_port()))
    contexts = {str(cx.abstract_syntax): cx for cx in ae.supported_contexts}
    storage = storage_sop_classes()
    assert set(RETIRED_STORAGE_CLASSES) <= set(storage) and len(storage) == len(set(storage))
    for uid in storage:
        assert [str(ts) for ts in contexts[uid].transfer_syntax] == ACCEPTED
    for uid in RETIRED_STORAGE_CLASSES:
        assert is_image_storage(uid)  # the C-STORE handler files them as images


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with pytest.MonkeyPatch.context() as env:  # only the settings given here
        for name in [n for n in os.environ if n.startswith("DICOM_NODE_")]:
            env.delenv(name)
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("node"),
            host="127.0.0.1",
            port=free_port(),
            study_quiet_seconds=60,
        )
        scp = StoreSCP(settings, publish=RecordingPublisher())
        scp.start()
    yield scp
    scp.stop()


def _associate(port: int, contexts: list[tuple[str, list[str]]]) -> Association:
    ae = AE(ae_title="TEST_SCU")
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    return assoc


def _stored(scp: StoreSCP, ds: Dataset) -> Dataset:
    return dcmread(scp.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID))


def test_every_accepted_syntax_is_stored_as_received(
    node: StoreSCP, samples: dict[str, Sample]
) -> None:
    sent = {syntax: dcmread(_sample(samples, syntax).path) for syntax in ACCEPTED}
    assoc = _associate(node.port, [(str(ds.SOPClassUID), [s]) for s, ds in sent.items()])
    try:
        assert not assoc.rejected_contexts
        statuses = {syntax: int(assoc.send_c_store(ds).Status) for syntax, ds in sent.items()}
    finally:
        assoc.release()
    assert statuses == dict.fromkeys(ACCEPTED, dimse.SUCCESS)
    for syntax, ds in sent.items():
        stored = _stored(node, ds)
        assert stored.file_meta.TransferSyntaxUID == syntax  # no conversion
        assert stored.PixelData == ds.PixelData
        assert np.array_equal(pixel_array(stored), pixel_array(ds))


def test_undecodable_syntaxes_are_rejected_and_the_sender_fails_cleanly(
    node: StoreSCP, samples: dict[str, Sample]
) -> None:
    assoc = _associate(
        node.port, [(Verification, [EXPLICIT]), *((CR, [uid]) for uid in NOT_ACCEPTED)]
    )
    try:
        rejected = {str(cx.transfer_syntax[0]): cx.result for cx in assoc.rejected_contexts}
        assert rejected == dict.fromkeys(NOT_ACCEPTED, 0x04)  # transfer-syntaxes-not-supported
        ds = dcmread(samples[JPEG_EXTENDED].path)
        ds.SOPClassUID = CR
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ds)
        assert int(assoc.send_c_echo().Status) == dimse.SUCCESS  # the association lives on
    finally:
        assoc.release()
    assert not node.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID).exists()


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(args[0]), *args[1:]],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_sender_that_can_convert_converts(node: StoreSCP, samples: dict[str, Sample]) -> None:
    jpeg_extended, j2k = samples[JPEG_EXTENDED].path, samples[J2K_LOSSLESS].path
    # dcmsend proposes [JPEG Extended, Explicit, Big Endian, Implicit] in one
    # context for the first file (it may decompress), [JPEG 2000 lossless] for
    # the second: the case, where the modality got Success for an
    # image the worker could not decode.
    out = _dcmtk(
        "dcmsend", "+dly", "-aec", CALLED, "127.0.0.1", str(node.port), str(jpeg_extended), str(j2k)
    )
    assert out.returncode == 0, out.stderr
    converted = _stored(node, dcmread(jpeg_extended, stop_before_pixels=True))
    assert converted.file_meta.TransferSyntaxUID == EXPLICIT  # decompressed by the sender
    assert pixel_array(converted).shape == (1024, 256)
    kept = _stored(node, dcmread(j2k, stop_before_pixels=True))  # stored as received
    assert kept.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    assert kept.PixelData == dcmread(j2k).PixelData


def test_a_sender_that_cannot_convert_fails_cleanly(
    node: StoreSCP, samples: dict[str, Sample], tmp_path: Path
) -> None:
    jpeg_extended = with_new_uids(samples[JPEG_EXTENDED].path, tmp_path / "jpeg.dcm")
    # storescu -xx proposes [JPEG Extended] and [uncompressed] in two contexts;
    # we accept only the second, and dcmtk 3.6's storescu cannot decompress.
    out = _dcmtk("storescu", "-xx", "-aec", CALLED, "127.0.0.1", str(node.port), str(jpeg_extended))
    assert out.returncode != 0 and "unable to convert" in out.stderr
    ds = dcmread(jpeg_extended, stop_before_pixels=True)
    assert not node.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID).exists()
    assert _dcmtk("echoscu", "-aec", CALLED, "127.0.0.1", str(node.port)).returncode == 0


def test_the_senders_preference_decides(node: StoreSCP, samples: dict[str, Sample]) -> None:
    proposals = {
        CR: ([J2K_LOSSLESS, EXPLICIT], J2K_LOSSLESS),
        MR: ([EXPLICIT, J2K_LOSSLESS], J2K_LOSSLESS),  # lossless compressed stores less
        CT: ([EXPLICIT, IMPLICIT], EXPLICIT),
        SC: ([J2K, EXPLICIT], J2K),  # nothing lossless compressed: the sender's order
        DX: ([IMPLICIT, EXPLICIT], IMPLICIT),
        XA: ([J2K, EXPLICIT, RLE], RLE),
    }
    assoc = _associate(node.port, [(sop, offered) for sop, (offered, _) in proposals.items()])
    try:
        chosen = {
            str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
        }
        assert chosen == {sop: expected for sop, (_, expected) in proposals.items()}
        ds = dcmread(samples[J2K_LOSSLESS].path)  # an MR, JPEG 2000 lossless
        assert int(assoc.send_c_store(ds).Status) == dimse.SUCCESS
    finally:
        assoc.release()
    assert _stored(node, ds).file_meta.TransferSyntaxUID == J2K_LOSSLESS
    # The next association proposes CR the other way round, and MR as dcmtk's
    # storescu -xv does: [JPEG 2000 lossless] and [uncompressed] in two contexts.
    assoc = _associate(
        node.port, [(CR, [EXPLICIT, J2K]), (MR, [J2K_LOSSLESS]), (MR, [EXPLICIT, IMPLICIT])]
    )
    try:
        chosen_in_order = [
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in sorted(assoc.accepted_contexts, key=lambda cx: cx.context_id or 0)
        ]
        assert chosen_in_order == [(CR, EXPLICIT), (MR, J2K_LOSSLESS), (MR, EXPLICIT)]
    finally:
        assoc.release()


def test_retired_storage_classes_are_stored(node: StoreSCP) -> None:
    study = generate_uid()
    sent = []
    for sop_class in RETIRED_STORAGE_CLASSES:
        ds = dcmread(str(get_testdata_file("MR_small.dcm")))
        ds.SOPClassUID = sop_class
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        sent.append(ds)
    assoc = _associate(node.port, [(uid, [EXPLICIT]) for uid in RETIRED_STORAGE_CLASSES])
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in sent] == [dimse.SUCCESS] * 3
    finally:
        assoc.release()
    for ds in sent:
        assert _stored(node, ds).SOPClassUID == ds.SOPClassUID
    view = node.ledger.get(study)
    assert view is not None and view.study.instance_count == 3  # images: they make a study
