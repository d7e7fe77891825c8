"""``dicom-node exports list | retry | drop`` and dead letters in ``dicom-node status``.

A real ledger (SQLite in tmp) holds dead letters made through the ledger API the
``deliver`` task uses; the CLI runs in-process; ``retry`` publishes to a real
redis-server, read back from its ``delivery`` queue.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from dicom_node.app import exports
from dicom_node.app.cli import main
from dicom_node.core.contract import DELIVER_TASK
from dicom_node.core.ledger import (
    AnalysisSpec,
    AnalysisState,
    DeliveryState,
    InstanceRecord,
    Ledger,
    StudyState,
)
from dicom_node.core.settings import Settings
from tests.conftest import free_port, queued_messages, start_redis

MODEL = AnalysisSpec("xrv-densenet121-res224-all", "1.0.0", 1)
CR = "1.2.840.10008.5.1.4.1.1.1"
DESTINATIONS = [
    {"name": "pacs", "kind": "c_store", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
    {"name": "viewer", "kind": "stow_rs", "url": "http://127.0.0.1:1/dicom-web"},
]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis-exports"))
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def client(redis_port: int) -> redis.Redis:
    client = redis.Redis(port=redis_port)
    client.flushdb()
    return client


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_port: int) -> Ledger:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOM_NODE_BROKER_URL", f"redis://127.0.0.1:{redis_port}/0")
    monkeypatch.setenv("DICOM_NODE_DESTINATIONS", json.dumps(DESTINATIONS))
    return Ledger(f"sqlite:///{(tmp_path / 'ledger.sqlite').resolve()}")


@dataclass(frozen=True)
class Story:
    """Two studies' deliveries: four dead letters, one delivered with a warning, one superseded."""

    first: int  # analysis of study 1.2.3
    second: int  # analysis of study 4.5.6
    pacs_sr: int  # 0xC000 (error)
    pacs_sc: int  # 0xA700 after the last attempt
    viewer_sr: int  # 0xA900 (error)
    other_pacs: int  # study 4.5.6, 0x0122
    viewer_sc: int  # delivered, 0xB000 warning
    superseded: int  # study 4.5.6 to the viewer

    @property
    def dead(self) -> list[int]:
        return [self.pacs_sr, self.pacs_sc, self.viewer_sr, self.other_pacs]


def _analysis(ledger: Ledger, study: str) -> int:
    ledger.record_instance(
        InstanceRecord(study, f"{study}.9", f"{study}.1", CR, "1.2.840.10008.1.2.1", "/s", "MOD")
    )
    assert ledger.transition_study(study, 1, StudyState.QUEUED)
    (analysis,) = ledger.create_analyses(study, 1, [MODEL])
    assert ledger.transition_study(study, 1, StudyState.ROUTED)
    assert ledger.transition_analysis(analysis.id, AnalysisState.RUNNING, backend="torch")
    return analysis.id


def _dead(ledger: Ledger, delivery_id: int, status: int, attempts: int = 1) -> None:
    for _ in range(attempts - 1):
        assert ledger.record_delivery_attempt(delivery_id, "refused", status=status)
    assert ledger.record_delivery_attempt(delivery_id, None, status=status)
    assert ledger.transition_delivery(
        delivery_id, DeliveryState.FAILED, last_error=f"status 0x{status:04X}", status=status
    )


def story(ledger: Ledger) -> Story:
    first, second = _analysis(ledger, "1.2.3"), _analysis(ledger, "4.5.6")
    sr = ledger.add_report(first, "tid1500", "2.25.11", "2.25.10", "/r/11.dcm", CR, 0)
    sc = ledger.add_report(first, "key_image", "2.25.21", "2.25.20", "/r/21.dcm", CR, 0)
    other = ledger.add_report(second, "tid1500", "2.25.31", "2.25.30", "/r/31.dcm", CR, 0)
    pacs_sr, viewer_sr = ledger.add_deliveries(sr.id, ["pacs", "viewer"])
    pacs_sc, viewer_sc = ledger.add_deliveries(sc.id, ["pacs", "viewer"])
    other_pacs, superseded = ledger.add_deliveries(other.id, ["pacs", "viewer"])
    _dead(ledger, pacs_sr.id, 0xC000)
    _dead(ledger, pacs_sc.id, 0xA700, attempts=3)
    _dead(ledger, viewer_sr.id, 0xA900)
    _dead(ledger, other_pacs.id, 0x0122)
    assert ledger.transition_delivery(
        viewer_sc.id,
        DeliveryState.DELIVERED,
        status=0xB000,
        warning="0xB000 (Warning: Coercion of Data Elements)",
    )
    assert ledger.transition_delivery(superseded.id, DeliveryState.SUPERSEDED)
    return Story(
        first,
        second,
        pacs_sr.id,
        pacs_sc.id,
        viewer_sr.id,
        other_pacs.id,
        viewer_sc.id,
        superseded.id,
    )


def states(ledger: Ledger, ids: list[int]) -> list[str]:
    found = [ledger.get_delivery(i) for i in ids]
    return [d.state.value if d else "missing" for d in found]


def deliver_messages(client: redis.Redis) -> list[tuple[str, str, dict[str, Any]]]:
    """(task name, task id, request) of every message in the ``delivery`` queue."""
    out = []
    for message in queued_messages(client, "delivery"):
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        out.append((message["headers"]["task"], message["headers"]["id"], kwargs["request"]))
    return out


# -- list ---------------------------------------------------------------------------------


def test_list_shows_each_dead_letter_on_one_line(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["exports", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"

    s = story(ledger)
    assert main(["exports", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    by_id = {int(line.split("  ")[0]): line for line in lines}
    assert sorted(by_id) == sorted(s.dead)
    line = by_id[s.pacs_sc]
    for part in (
        "  pacs  ",
        "study 1.2.3 generation 1",
        MODEL.model_id,
        "  key_image  ",
        "2.25.21",
        "status 0xA700 (Refused: Out of Resources)",
        "3 attempts",
        "last error: status 0xA700",
    ):
        assert part in line, (part, line)
    assert "status 0xC000 (Error: Cannot understand)" in by_id[s.pacs_sr]
    assert "  viewer  " in by_id[s.viewer_sr] and "0xA900" in by_id[s.viewer_sr]
    assert "study 4.5.6" in by_id[s.other_pacs]
    assert "0x0122 (Refused: SOP Class not supported)" in by_id[s.other_pacs]

    assert main(["exports", "list", "--json"]) == 0
    data = {d["delivery_id"]: d for d in json.loads(capsys.readouterr().out)}
    assert sorted(data) == sorted(s.dead)
    assert data[s.pacs_sr] | {"last_attempt_at": 0} == {
        "delivery_id": s.pacs_sr,
        "destination": "pacs",
        "study_uid": "1.2.3",
        "generation": 1,
        "model_id": MODEL.model_id,
        "profile": "tid1500",
        "sop_instance_uid": "2.25.11",
        "state": "failed",
        "status": 0xC000,
        "status_text": "0xC000 (Error: Cannot understand)",
        "attempts": 1,
        "last_error": "status 0xC000",
        "last_attempt_at": 0,
    }


# -- retry --------------------------------------------------------------------------------


def test_retry_publishes_one_deliver_task_per_analysis_and_destination(
    ledger: Ledger, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    s = story(ledger)
    assert main(["exports", "retry", "--destination", "viewer"]) == 0
    assert [m[1] for m in deliver_messages(client)] == [f"deliver:{s.first}:viewer"]
    assert states(ledger, s.dead) == ["failed", "failed", "pending", "failed"]
    capsys.readouterr()

    assert main(["exports", "retry", "--all"]) == 0
    out = capsys.readouterr().out
    assert "3 delivery(ies) pending again; published 2 deliver task(s)" in out
    messages = deliver_messages(client)
    # pacs_sr and pacs_sc are one analysis to one destination: one task, one association.
    assert sorted((task, task_id) for task, task_id, _ in messages) == sorted(
        [
            (DELIVER_TASK, f"deliver:{s.first}:viewer"),
            (DELIVER_TASK, f"deliver:{s.first}:pacs"),
            (DELIVER_TASK, f"deliver:{s.second}:pacs"),
        ]
    )
    requests = {task_id: request for _, task_id, request in messages}
    assert requests[f"deliver:{s.second}:pacs"] == {"analysis_id": s.second, "destination": "pacs"}
    assert states(ledger, s.dead) == ["pending"] * 4
    reopened = ledger.get_delivery(s.pacs_sc)
    assert reopened is not None and reopened.attempts == 0  # a fresh round of attempts
    assert states(ledger, [s.viewer_sc, s.superseded]) == ["delivered", "superseded"]

    assert main(["exports", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters"
    assert main(["exports", "retry", "--all"]) == 1  # nothing failed any more
    assert "no dead letters match" in capsys.readouterr().out
    assert main(["exports", "retry", "999", str(s.viewer_sc)]) == 1
    assert f"left alone: {s.viewer_sc} 999" in capsys.readouterr().err
    assert len(deliver_messages(client)) == 3


def test_retry_with_the_broker_down_is_a_clear_error_and_changes_nothing(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = story(ledger)
    monkeypatch.setenv("DICOM_NODE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["exports", "retry", "--all"]) == 2
    captured = capsys.readouterr()
    assert "broker unreachable" in captured.err and "nothing reopened" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert states(ledger, s.dead) == ["failed"] * 4

    monkeypatch.delenv("DICOM_NODE_BROKER_URL")
    assert main(["exports", "retry", "--all"]) == 2
    assert "DICOM_NODE_BROKER_URL is not set" in capsys.readouterr().err
    assert states(ledger, s.dead) == ["failed"] * 4


def test_a_broker_lost_after_reopening_loses_nothing(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis dies between the check and the publish: the deliveries stay pending, named;
    ``retry`` of those ids, once Redis is back, publishes them."""
    s = story(ledger)
    port = free_port()
    server = start_redis(port, tmp_path)
    settings = Settings(broker_url=f"redis://127.0.0.1:{port}/0")

    class DiesAfterCheck(exports.DeliverPublisher):
        def check(self) -> None:
            super().check()
            server.terminate()
            server.wait(10)

    out: list[str] = []
    err: list[str] = []
    code = exports.retry(
        ledger, settings, exports.Selection(every=True), out.append, err.append, DiesAfterCheck
    )
    assert code == 2, (out, err)
    (message,) = err
    assert "broker unreachable" in message and "published 0 of 3" in message
    ids = " ".join(str(i) for i in sorted(s.dead))
    assert f"`dicom-node exports retry {ids}`" in message
    assert states(ledger, s.dead) == ["pending"] * 4  # reopened, not lost

    server = start_redis(port, tmp_path)
    try:
        code = exports.retry(
            ledger, settings, exports.Selection(ids=tuple(s.dead)), out.append, err.append
        )
        assert code == 0, err
        client = redis.Redis(port=port)
        assert sorted(m[1] for m in deliver_messages(client)) == sorted(
            [f"deliver:{s.first}:pacs", f"deliver:{s.first}:viewer", f"deliver:{s.second}:pacs"]
        )
    finally:
        server.terminate()
        server.wait(10)


def test_retry_of_an_unconfigured_destination_warns(
    ledger: Ledger,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = story(ledger)
    monkeypatch.setenv("DICOM_NODE_DESTINATIONS", json.dumps(DESTINATIONS[:1]))
    assert main(["exports", "retry", str(s.viewer_sr)]) == 0
    assert "destination 'viewer' is not configured here" in capsys.readouterr().err
    assert [m[1] for m in deliver_messages(client)] == [f"deliver:{s.first}:viewer"]


# -- drop ---------------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drop_asks_unless_yes_and_list_all_shows_dropped(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = story(ledger)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    assert main(["exports", "drop", "--all"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert states(ledger, s.dead) == ["failed"] * 4

    monkeypatch.setattr(sys, "stdin", Tty("n\n"))
    assert main(["exports", "drop", str(s.pacs_sr)]) == 1
    assert "Drop 1 dead letter(s)" in capsys.readouterr().out
    assert states(ledger, [s.pacs_sr]) == ["failed"]

    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    assert main(["exports", "drop", str(s.pacs_sr)]) == 0
    assert "dropped 1 dead letter(s)" in capsys.readouterr().out
    assert main(["exports", "drop", "--destination", "pacs", "--yes"]) == 0
    assert "dropped 2 dead letter(s)" in capsys.readouterr().out
    assert states(ledger, s.dead) == ["dropped", "dropped", "failed", "dropped"]

    assert main(["exports", "drop", "--destination", "pacs", "--yes"]) == 1  # nothing left
    assert main(["exports", "drop", str(s.viewer_sc), "--yes"]) == 1  # delivered: not a letter
    assert main(["exports", "drop", "--yes"]) == 2  # no selection
    assert main(["exports", "drop", "1", "--all", "--yes"]) == 2  # two selections
    assert main(["exports", "retry", str(s.pacs_sr)]) == 1  # dropped is final
    capsys.readouterr()

    assert main(["exports", "list"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{s.viewer_sr}  viewer  ")
    assert main(["exports", "list", "--all"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and sum("  dropped  last error:" in line for line in lines) == 3
    assert main(["exports", "list", "--all", "--json"]) == 0
    assert sorted(d["state"] for d in json.loads(capsys.readouterr().out)) == [
        "dropped",
        "dropped",
        "dropped",
        "failed",
    ]


# -- status -------------------------------------------------------------------------------


def test_status_shows_the_dead_letters(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    assert "dead letters" not in capsys.readouterr().out
    s = story(ledger)
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "dead letters: 4 (dicom-node exports list)"
    assert (
        f"delivery pacs  failed (dead letter {s.pacs_sr})  1 attempt  "
        "status 0xC000 (Error: Cannot understand)  last error: status 0xC000"
    ) in text
    assert (
        "delivery viewer  delivered  0 attempts  took "  # delivered without a counted attempt
    ) in text
    assert "status 0xB000 (Warning: Coercion of Data Elements)  warning: 0xB000" in text
    assert "delivery viewer  superseded  0 attempts" in text

    assert main(["status", "--json"]) == 0
    studies = {v["study_uid"]: v for v in json.loads(capsys.readouterr().out)}
    assert studies["1.2.3"]["dead_letters"] == sorted([s.pacs_sr, s.pacs_sc, s.viewer_sr])
    assert studies["4.5.6"]["dead_letters"] == [s.other_pacs]


def test_exports_runs_as_a_command(ledger: Ledger, tmp_path: Path) -> None:
    """The installed entry point, in its own process: output and exit status."""
    story(ledger)
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "exports", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 4
    out = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "exports", "drop", "--all"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2 and "add --yes" in out.stderr and "Traceback" not in out.stderr
