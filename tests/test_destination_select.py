"""Which destinations take a study, by routing rule (calling AE, modality), and config errors."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_node.core.destinations import Destination
from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import load_settings
from workers.destinations.select import destinations_for, parse_routes, profiles_for

PACS = Destination(name="pacs", kind="c_store", ae_title="PACS", host="h", port=104)
ER = Destination(
    name="er-viewer",
    kind="stow_rs",
    url="http://viewer/dicom-web",
    profiles=["tid1500", "key_image"],
    rules=[{"calling_aes": ["CT_ER"]}],
)
CT_ONLY = Destination(
    name="ct-archive", kind="outbox", profiles=["pdf", "tid1500"], rules=[{"modalities": ["CT"]}]
)


def test_rules_choose_destinations_by_calling_ae_and_modality() -> None:
    routes = parse_routes([PACS, ER, CT_ONLY])
    ct = dcmread(get_testdata_file("693_UNCI.dcm"), stop_before_pixels=True)
    cr = dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert [d.name for d in destinations_for(routes, [cr], "CR_ROOM")] == ["pacs"]
    assert [d.name for d in destinations_for(routes, [cr], "CT_ER")] == ["pacs", "er-viewer"]
    both = destinations_for(routes, [ct], "CT_ER")
    assert [d.name for d in both] == ["pacs", "er-viewer", "ct-archive"]
    assert profiles_for(both) == ["tid1500", "key_image", "pdf"]


def test_unknown_profiles_and_bad_rules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        parse_routes([Destination(name="x", kind="outbox", profiles=["tid1500", "html"])])
    with pytest.raises(ConfigError, match=r"destination y: rules\[0\] is invalid"):
        parse_routes([Destination(name="y", kind="outbox", rules=[{"modality": "CT"}])])


def test_destination_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DICOM_NODE_DESTINATIONS", '[{"name": "pacs", "kind": "c_store", "host": "h"}]'
    )
    with pytest.raises(ConfigError, match="c_store needs ae_title, host, port"):
        load_settings()
    monkeypatch.delenv("DICOM_NODE_DESTINATIONS")
    twice = [PACS.model_dump(), PACS.model_dump()]
    with pytest.raises(ConfigError, match="used twice"):
        _ = load_settings(destinations=twice).report_destinations
    assert [d.name for d in load_settings().report_destinations] == ["outbox"]
    assert load_settings(pacs="PACS@10.0.0.5:104").destination("pacs").peer.port == 104
    with pytest.raises(ConfigError, match="no report destination named 'gone'"):
        load_settings().destination("gone")
