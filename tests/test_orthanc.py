"""Orthanc as a real PACS: every report profile over C-STORE and over STOW-RS.

One Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) per module, started on
loopback with its own configuration (:mod:`tests.peers.orthanc`). The source images
(pydicom-data RG1 chest CR, 693 head CT) go in first over C-STORE, so that each
report is compared with Orthanc's own patient and study records: every object
must be stored, filed under the same Orthanc patient and study as its source,
with the same PatientID and StudyInstanceUID.

The reports go through the node's own destinations (:func:`workers.destinations.send`:
one association, one STOW-RS request), as the ``deliver`` task sends them. C-STORE
reports use generation 1, STOW-RS reports generation 2 of another model version
(different SOP Instance UIDs), so each transport stores its own instances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom import AE

from dicom_node.core.destinations import Destination
from dicom_node.core.settings import load_settings
from tests.peers.orthanc import CALLING_AE, Orthanc, start_orthanc
from tests.test_report_validity import CASES, PROFILE_NAMES, build_objects, write_objects
from workers.destinations import Outbound, Sent, send


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def c_store(server: Orthanc, paths: Sequence[Path]) -> list[int]:
    """Send files over one association (pynetdicom SCU); the C-STORE statuses, in order."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        syntaxes = sorted(
            {str(ds.file_meta.TransferSyntaxUID) for ds in datasets if ds.SOPClassUID == sop_class}
        )
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        statuses = []
        for ds in datasets:
            answer = assoc.send_c_store(ds)
            assert "Status" in answer, f"no C-STORE response for {ds.SOPClassUID}"
            statuses.append(int(answer.Status))
        return statuses
    finally:
        assoc.release()


def deliver(
    server: Orthanc, transport: str, objects: Sequence[Dataset], paths: Sequence[Path], tmp: Path
) -> list[Sent]:
    """Send the report files with the node's destination code; one Sent per object."""
    if transport == "c_store":
        destination = Destination(
            name="orthanc",
            kind="c_store",
            ae_title=server.ae_title,
            host="127.0.0.1",
            port=server.dicom_port,
        )
    else:
        destination = Destination(name="orthanc-web", kind="stow_rs", url=server.dicomweb_url)
    items = [
        Outbound(i, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        for i, (ds, path) in enumerate(zip(objects, paths, strict=True))
    ]
    settings = load_settings(ae_title=CALLING_AE, data_dir=tmp / "node")
    return send(destination, items, settings)


@pytest.fixture(scope="module")
def sources(orthanc: Orthanc) -> dict[str, str]:
    """The source images stored in Orthanc: case name -> Orthanc instance ID."""
    stored = {}
    for name, case in CASES.items():
        assert c_store(orthanc, [case.source_path]) == [0x0000]
        orthanc_id = orthanc.instance_id(str(dcmread(case.source_path).SOPInstanceUID))
        assert orthanc_id, f"source {name} not stored"
        stored[name] = orthanc_id
    return stored


def filed_as_source(server: Orthanc, orthanc_id: str, source_id: str) -> dict[str, Any]:
    """Assert the instance is in the source's Orthanc patient and study; its simplified tags."""
    assert server.patient_of(orthanc_id)["ID"] == server.patient_of(source_id)["ID"]
    assert server.study_of(orthanc_id)["ID"] == server.study_of(source_id)["ID"]
    tags, source_tags = server.tags(orthanc_id), server.tags(source_id)
    assert (tags["PatientID"], tags["StudyInstanceUID"]) == (
        source_tags["PatientID"],
        source_tags["StudyInstanceUID"],
    )
    return tags


@pytest.mark.parametrize("transport", ["c_store", "stow_rs"])
@pytest.mark.parametrize("case_name", sorted(CASES))
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_orthanc_stores_every_profile_with_its_source(
    profile: str,
    case_name: str,
    transport: str,
    orthanc: Orthanc,
    sources: dict[str, str],
    tmp_path: Path,
) -> None:
    generation, variant = (1, "") if transport == "c_store" else (2, "+stow")
    objects = build_objects(profile, CASES[case_name], generation, variant)
    paths = write_objects(objects, tmp_path, f"{profile}-{case_name}-{transport}")
    uids = [str(ds.SOPInstanceUID) for ds in objects]
    assert all(orthanc.instance_id(uid) is None for uid in uids), "already stored"
    log_start = len(orthanc.log_lines())
    said = [f"Orthanc {profile}/{case_name} over {transport}:"]
    sent = deliver(orthanc, transport, objects, paths, tmp_path)
    statuses = [item.status for item in sent]
    said.append(f"  {transport} statuses " + ", ".join(f"0x{s:04X}" for s in statuses))
    assert statuses == [0x0000] * len(objects), [item.detail for item in sent]
    for ds, uid in zip(objects, uids, strict=True):
        orthanc_id = orthanc.instance_id(uid)
        assert orthanc_id, f"{profile} object {ds.SOPClassUID} not in Orthanc"
        tags = filed_as_source(orthanc, orthanc_id, sources[case_name])
        assert tags["SOPClassUID"] == ds.SOPClassUID and tags["Modality"] == ds.Modality
        said.append(f"  stored {ds.SOPClassUID} ({tags['Modality']}) as /instances/{orthanc_id}")
    notes = [line for line in orthanc.log_lines("W", "E")[log_start:]]
    said += [f"  log: {line}" for line in notes] or ["  log: nothing"]
    print("\n".join(said))
    assert not [line for line in notes if line.startswith("E")], notes


def test_orthanc_refuses_what_it_does_not_know(orthanc: Orthanc, tmp_path: Path) -> None:
    """The peer is a real check: a private SOP class is refused over C-STORE (0x0122)."""
    (sr,) = build_objects("tid1500", CASES["chest-cr"], 3)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = UID("1.2.826.0.1.3680043.8.498.99")
    (path,) = write_objects([sr], tmp_path, "private")
    datasets = dcmread(path)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(str(datasets.SOPClassUID), str(datasets.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.ae_title)
    try:
        # Orthanc rejects the association (no context accepted) or the context
        assert not assoc.is_established or not assoc.accepted_contexts
    finally:
        if assoc.is_established:
            assoc.release()
    assert orthanc.instance_id(str(sr.SOPInstanceUID)) is None
