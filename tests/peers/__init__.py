"""Real third-party peers the tests start on loopback (Orthanc as a PACS)."""
