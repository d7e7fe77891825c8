"""``dicom-node``: the node's command line.

Commands: ``up``, ``scp``, ``worker``, ``status``, ``exports``, ``ledger``, ``echo``, ``route``,
``models``, ``demo``.
Errors of this project print one line to stderr and exit 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node.core.errors import DicomNodeError
from dicom_node.core.settings import CONFIG_ENV, Peer, Settings, load_settings

log = logging.getLogger("dicom_node")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    # Alembic narrates every revision check at INFO; our migrate module says what changed.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def _cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.app.supervisor import ensure_data_dir, run_up

    ensure_data_dir(settings.data_dir)
    return run_up(settings)


def _cmd_scp(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app.supervisor import ScpGroup
    from dicom_node.ingest.scp import StoreSCP

    scp: StoreSCP | ScpGroup = (
        StoreSCP(settings, primary=False) if args.listener else ScpGroup(settings)
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scp.start()
    try:
        while not stop.wait(1.0):
            if isinstance(scp, ScpGroup):
                scp.restart_dead()
    except KeyboardInterrupt:
        pass
    finally:
        scp.stop()
    return 0


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app.supervisor import check_models
    from workers.app import run_worker

    if not settings.broker_url:
        raise DicomNodeError("DICOM_NODE_BROKER_URL is required for a standalone worker")
    held = check_models(settings, _split(args.models))  # unknown ids fail before Celery starts
    run_worker(settings, held, args.concurrency)
    return 0


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app.status_view import render_text, to_json
    from dicom_node.core.ledger import Ledger

    ledger = Ledger(settings.resolved_ledger_url, upgrade=False)
    views = ledger.studies(limit=args.limit)
    if args.json:
        print(json.dumps(to_json(views), indent=2))
    else:
        print(render_text(views, dead_letters=ledger.count_dead_letters()))
    return 0


def _cmd_exports(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app import exports
    from dicom_node.core.ledger import Ledger

    ledger = Ledger(settings.resolved_ledger_url, upgrade=False)
    if args.exports_cmd == "list":
        letters = ledger.dead_letters(include_dropped=args.all, limit=args.limit)
        if args.json:
            print(json.dumps([exports.letter_json(dl) for dl in letters], indent=2))
        else:
            print(exports.render_list(letters))
        return 0
    selection = exports.Selection(tuple(args.ids), args.all, args.destination)
    if args.exports_cmd == "retry":
        return exports.retry(ledger, settings, selection, print, _stderr)
    return exports.drop(ledger, selection, args.yes, print, _stderr)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _cmd_ledger(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.core.ledger import current_revision, head_revision, upgrade_ledger

    url = settings.resolved_ledger_url
    before = current_revision(url)
    upgrade_ledger(url)
    print(f"ledger schema {before or 'empty'} -> {head_revision()}")
    return 0


def _cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.app.echo_scu import echo

    peer = Peer.parse(args.peer)
    code = echo(peer, settings.ae_title)
    print(f"C-ECHO {peer}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def _cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from models import weights
    from models.registry import ModelRegistry

    registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
    models_dir = settings.resolved_models_dir
    if args.models_cmd == "list":
        for row in weights.list_models(registry, models_dir):
            print(row)
        return 0
    if args.models_cmd == "build":
        return _models_build(settings, registry, args)
    manifest = registry.get(args.model)
    if args.models_cmd == "fetch":
        info = weights.fetch_weights(manifest, models_dir, url=args.url)
    elif args.models_cmd == "import":
        info = weights.import_weights(Path(args.file), manifest, models_dir)
    else:
        info = weights.verify_weights(manifest, models_dir)
    print(
        f"{manifest.id} {manifest.version}: {info.kind} weights {info.path}\n"
        f"  sha256 {info.sha256}\n  source sha256 {info.source_sha256}"
    )
    if args.models_cmd == "verify" and not args.weights_only:
        return _models_verify_backends(settings, manifest, info, args)
    return 0


def _backend_options(settings: Settings, manifest: Any, precision: Any = None) -> Any:
    from dataclasses import replace

    from workers.context import backend_options

    options = backend_options(settings, manifest)
    return replace(options, precision=precision) if precision else options


def _models_build(settings: Settings, registry: Any, args: argparse.Namespace) -> int:
    from models.engines.ahead import build_ahead
    from models.weights import resolve_weights

    ids = args.model or settings.enabled_models or registry.ids()
    models_dir = settings.resolved_models_dir
    status = 0
    for model_id in ids:
        manifest = registry.get(model_id)
        info = resolve_weights(manifest, models_dir, settings.allow_demo_weights)
        options = _backend_options(settings, manifest, args.precision)
        lines, ok = build_ahead(manifest, info, models_dir, args.backend, options)
        for line in lines:
            print(line)
        status = status or (0 if ok else 1)
    return status


def _models_verify_backends(
    settings: Settings, manifest: Any, info: Any, args: argparse.Namespace
) -> int:
    from pydicom import dcmread

    from models.preprocessing import Preprocessor
    from models.verify import render_rows, verify_backends

    images = []
    if args.images:
        pre = Preprocessor.from_manifest(manifest)
        images = [pre.pre(dcmread(path)) for path in args.images]
    options = _backend_options(settings, manifest)
    rows = verify_backends(
        manifest, info, settings.resolved_models_dir, options=options, images=images
    )
    print(f"reference: torch fp32 eager on cpu; {8 + len(images)} input(s)")
    print(render_rows(rows))
    failed = [row for row in rows if not row.ok]
    print(f"{manifest.id}: {'FAIL' if failed else 'OK'} ({len(failed)} failing of {len(rows)})")
    return 1 if failed else 0


def _cmd_route(settings: Settings, args: argparse.Namespace) -> int:
    from models.registry import ModelRegistry
    from models.routing import read_headers, route

    registry = ModelRegistry.load(settings.resolved_models_dir / "manifests")
    missing = [name for name in args.paths if not Path(name).exists()]
    if missing:
        raise DicomNodeError(f"{missing[0]}: no such file or directory")
    instances, unreadable = read_headers(args.paths)
    plan = route(registry, instances, args.calling_ae, enabled=settings.enabled_models)
    for match in plan.matches:
        print(
            f"RUN  {match.model_id} {match.version}: {len(match.paths)} image(s) "
            f"in series {', '.join(match.series_uids)}"
        )
    for series_uid, model_id, why in plan.rejections:
        print(f"SKIP {model_id} on series {series_uid}: {why}")
    for line in unreadable:
        print(f"SKIP {line}")
    if not plan.matches:
        print("no model would run")
    return 0


def _cmd_demo(settings: Settings, _: argparse.Namespace) -> int:
    from dicom_node.app.demo import run_demo

    return run_demo(settings)


def _exports_parser(sub: Any) -> None:
    exports = sub.add_parser("exports", help="dead letters: report deliveries that failed for good")
    exports_sub = exports.add_subparsers(dest="exports_cmd", required=True)
    listing = exports_sub.add_parser("list", help="the dead letters, newest first")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="dropped ones too")
    listing.add_argument("--limit", type=int, default=1000)
    for name, text in (
        ("retry", "send dead letters again (reopen, then publish their deliver tasks)"),
        ("drop", "give dead letters up: they are never sent"),
    ):
        cmd = exports_sub.add_parser(
            name, help=text, epilog="exit status: 0 done, 1 nothing matched, 2 error"
        )
        cmd.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids (list)")
        cmd.add_argument("--all", action="store_true", help="every dead letter")
        cmd.add_argument(
            "--destination", metavar="NAME", help="the dead letters of one destination"
        )
        if name == "drop":
            cmd.add_argument("--yes", action="store_true", help="do not ask")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"YAML settings file (sets {CONFIG_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run Redis (unless a broker is set), a worker and the SCP")
    scp = sub.add_parser("scp", help="run the C-ECHO / C-STORE SCP only")
    scp.add_argument(
        "--listener",
        action="store_true",
        help="an extra process on the primary's port (started by the primary; "
        "DICOM_NODE_SCP_PROCESSES)",
    )
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="analyses run at once, in threads sharing one batcher per model "
        "(default: DICOM_NODE_WORKER_CONCURRENCY, 4)",
    )
    worker.add_argument(
        "--models", help="comma-separated manifest ids it holds (default: DICOM_NODE_MODELS, all)"
    )
    status = sub.add_parser("status", help="studies with their analyses, reports and deliveries")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--json", action="store_true")
    _exports_parser(sub)
    ledger = sub.add_parser("ledger", help="manage the ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_cmd", required=True)
    ledger_sub.add_parser("upgrade", help="upgrade the ledger schema in place")
    echo = sub.add_parser("echo", help="C-ECHO a peer")
    echo.add_argument("peer", help="AE@host:port")
    route = sub.add_parser("route", help="dry run: which models would run on these files")
    route.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    route.add_argument("--calling-ae", help="calling AE title the rules may match")
    models = sub.add_parser("models", help="manage models and their weights")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    models_sub.add_parser("list", help="known models and their installed weights")
    fetch = models_sub.add_parser("fetch", help="download a model's published weights")
    fetch.add_argument("model", help="manifest id")
    fetch.add_argument("--url", help="mirror URL instead of the manifest's")
    imp = models_sub.add_parser("import", help="import weights you have (.pt, .safetensors, .onnx)")
    imp.add_argument("model", help="manifest id")
    imp.add_argument("file")
    verify = models_sub.add_parser(
        "verify",
        help="re-hash installed weights against their pins, then check every available "
        "backend and precision against the reference outputs (exit 1 on any FAIL)",
    )
    verify.add_argument("model", help="manifest id")
    verify.add_argument(
        "--weights-only", action="store_true", help="only re-hash the weights"
    )
    verify.add_argument(
        "--image", dest="images", action="append", default=[], metavar="DICOM_FILE",
        help="also compare on this instance, preprocessed (repeatable)",
    )
    build = models_sub.add_parser(
        "build",
        help="build engines ahead of time: the ONNX export; TensorRT engines when "
        "TensorRT and a GPU are there",
    )
    build.add_argument("model", nargs="*", help="manifest ids (default: enabled models, else all)")
    build.add_argument(
        "--backend", choices=["auto", "tensorrt", "torch", "onnxruntime", "all"], default="auto"
    )
    build.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16", "int8"],
        help="default: DICOM_NODE_INFERENCE_PRECISION",
    )
    sub.add_parser("demo", help="push the sample chest X-ray and print its SR")
    return parser


COMMANDS = {
    "up": _cmd_up,
    "scp": _cmd_scp,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "exports": _cmd_exports,
    "ledger": _cmd_ledger,
    "route": _cmd_route,
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
