"""``dicom-node``: the node's command line.

Commands: ``up``, ``scp``, ``worker``, ``status``, ``echo``, ``models``, ``demo``.
Errors of this project print one line to stderr and exit 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from dicom_node.core.settings import CONFIG_ENV, Peer, Settings, load_settings
from dicom_node.core.errors import DicomNodeError

log = logging.getLogger("dicom_node")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )


def _cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.app.supervisor import ensure_data_dir, run_up

    ensure_data_dir(settings.data_dir)
    return run_up(settings)


def _cmd_scp(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.ingest.scp import StoreSCP

    scp = StoreSCP(settings)
    scp.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        scp.stop()
    return 0


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.core.contract import worker_argv

    if not settings.broker_url:
        raise DicomNodeError("DICOM_NODE_BROKER_URL is required for a standalone worker")
    argv = worker_argv(settings.model_id, args.concurrency, settings.log_level)
    os.execv(sys.executable, argv)


def _when(epoch: float | None) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _span(start: float | None, end: float | None) -> str:
    return f"{end - start:.2f}" if start and end else "-"


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.core.ledger import Ledger

    ledger = Ledger(settings.resolved_ledger_url)
    studies = ledger.studies(limit=args.limit)
    if args.json:
        print(json.dumps([{**s.__dict__, "state": s.state.value} for s in studies], indent=2))
        return 0
    if not studies:
        print("no studies in the ledger")
        return 0
    untrained = " [UNTRAINED weights]"
    print(
        f"{'Study Instance UID':<64} {'state':<14} {'n':>3} {'last received':<19} "
        f"{'wait s':>7} {'infer s':>7} {'deliv s':>7}  reason"
    )
    for s in studies:
        print(
            f"{s.study_uid:<64} {s.state.value:<14} {s.instance_count:>3} "
            f"{_when(s.last_received_at):<19} {_span(s.last_received_at, s.inferring_at):>7} "
            f"{_span(s.inferring_at, s.reported_at):>7} {_span(s.reported_at, s.delivered_at):>7}"
            f"  {s.reason or ''}{untrained if s.weights_kind == 'untrained-demo' else ''}"
        )
    return 0


def _cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app.echo_scu import echo

    peer = Peer.parse(args.peer)
    code = echo(peer, settings.ae_title)
    print(f"C-ECHO {peer}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def _cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from models.manifest import ModelRegistry
    from models.weights.store.store import fetch_weights, import_checkpoint, resolve_weights

    registry = ModelRegistry.from_directory()
    manifest = registry.get(args.model or settings.model_id)
    models_dir = settings.resolved_models_dir
    if args.models_cmd == "fetch":
        info = fetch_weights(manifest, models_dir, url=args.url)
    elif args.models_cmd == "import":
        info = import_checkpoint(Path(args.file), manifest, models_dir, origin=Path(args.file).name)
    else:
        for model_id in registry.ids():
            try:
                w = resolve_weights(registry.get(model_id), models_dir, allow_demo=False)
                print(f"{model_id}: {w.kind} weights, sha256 {w.sha256}")
            except DicomNodeError as exc:
                print(f"{model_id}: {exc}")
        return 0
    print(
        f"{manifest.id}: {info.kind} weights {info.path}\n  sha256 {info.sha256}\n"
        f"  source sha256 {info.source_sha256}"
    )
    return 0


def _cmd_demo(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.app.demo import run_demo

    return run_demo(settings)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"YAML settings file (sets {CONFIG_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run Redis (unless a broker is set), a worker and the SCP")
    sub.add_parser("scp", help="run the C-ECHO / C-STORE SCP only")
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--concurrency", type=int, default=1)
    status = sub.add_parser("status", help="list studies in the ledger")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--json", action="store_true")
    echo = sub.add_parser("echo", help="C-ECHO a peer")
    echo.add_argument("peer", help="AE@host:port")
    models = sub.add_parser("models", help="manage model weights")
    models.add_argument("--model", help="manifest id (default: DICOM_NODE_MODEL_ID)")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    fetch = models_sub.add_parser("fetch", help="download the published weights")
    fetch.add_argument("--url", help="mirror URL instead of the manifest's")
    imp = models_sub.add_parser("import", help="import a weights file you already have")
    imp.add_argument("file")
    models_sub.add_parser("list", help="show installed weights")
    sub.add_parser("demo", help="push the sample chest X-ray and print its SR")
    return parser


COMMANDS = {
    "up": _cmd_up,
    "scp": _cmd_scp,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "echo": _cmd_echo,
    "models": _cmd_models,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dicom-node``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = args.config
    try:
        settings = load_settings()
        _configure_logging(settings.log_level)
        return COMMANDS[args.command](settings, args)
    except DicomNodeError as exc:
        print(f"dicom-node: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
