"""`hpeft report` and `hpeft dashboard`.

    hpeft report --runs runs/ [--storage URL --study NAME] [--wandb ENTITY/PROJECT] [--out report.html]
    hpeft dashboard [--runs runs/] [--port 8050] [--storage URL --study NAME [--optuna-port 8080]]
"""

from __future__ import annotations

import argparse
import html
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from hpeft.report.page import build_page
from hpeft.report.rows import mark_pareto, to_rows
from hpeft.report.sources import collect
from hpeft.utils.atomic import atomic_write_text

PARETO_COLUMNS = ["run", "task", "scenario", "method", "metric_name", "metric", "trainable", "flops", "pareto_params", "pareto_flops"]


def _sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="*", default=None, help="run directories or folders above them (default: runs)")
    parser.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...)")
    parser.add_argument("--study", help="Optuna study name (with --storage)")


def gather(args, wandb_path: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    runs = args.runs if args.runs is not None else (["runs"] if not args.storage and not wandb_path else [])
    missing = [r for r in runs if not Path(r).exists()]
    if missing:
        raise ValueError(f"--runs {missing}: no such directory")
    summaries, skipped = collect(runs=runs, storage=args.storage, study=args.study, wandb_path=wandb_path)
    rows, no_metric = to_rows(summaries)
    skipped += no_metric
    if not rows:
        where = ", ".join([*runs, *([f"study {args.study}"] if args.study else []), *([f"W&B {wandb_path}"] if wandb_path else [])])
        why = f"; skipped: {skipped[:5]}" if skipped else " (looked for summary.json files)"
        raise ValueError(f"no runs with a test metric found in {where or 'nothing'}{why}")
    return rows, skipped


def report_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hpeft report", description="Accuracy-FLOPs-Params report as one HTML page.")
    _sources(parser)
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read runs from this W&B project (when W&B is online) and log the Pareto table to it")
    parser.add_argument("--out", default="report.html", help="the HTML file to write")
    parser.add_argument("--title", default="hpeft report")
    args = parser.parse_args(argv)
    from hpeft.utils.wandb_mode import resolve_wandb_mode

    mode = resolve_wandb_mode("auto") if args.wandb else None
    try:
        rows, skipped = gather(args, args.wandb if mode == "online" else None)
    except ValueError as err:
        parser.exit(2, f"hpeft report: error: {err}\n")
    atomic_write_text(args.out, build_page(rows, skipped, args.title))
    for where, why in skipped:
        print(f"skipped {where}: {why}")
    print(f"hpeft report: {len(rows)} runs -> {args.out}")
    if args.wandb:
        log_pareto_table(rows, args.wandb, mode)


def log_pareto_table(rows: list[dict], path: str, mode: str) -> None:
    """The runs with their frontier flags as a W&B Table, in its own W&B run of the project."""
    import wandb

    mark_pareto(rows)
    entity, _, project = path.rpartition("/")
    run = wandb.init(project=project, entity=entity or None, job_type="report", mode=mode, dir=os.environ.get("WANDB_DIR"))
    run.log({"pareto": wandb.Table(columns=PARETO_COLUMNS, data=[[r[c] for c in PARETO_COLUMNS] for r in rows])})
    run.finish()
    print(f"hpeft report: Pareto table logged to W&B {path} ({mode})")


class _Page:
    """The report page, rebuilt when a summary.json under the run folders is added or changes."""

    def __init__(self, args):
        self.args, self.stamp, self.html, self.lock = args, None, "", threading.Lock()

    def _stamp(self) -> tuple:
        roots = self.args.runs if self.args.runs is not None else ["runs"]
        files = [p for r in roots if Path(r).exists() for p in Path(r).rglob("summary.json")]
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in files))

    def get(self) -> str:
        with self.lock:
            stamp = self._stamp()
            if stamp != self.stamp or self.args.storage:
                try:
                    rows, skipped = gather(self.args)
                    self.html = build_page(rows, skipped, "hpeft dashboard", refresh_s=self.args.refresh)
                except Exception as err:  # noqa: BLE001 - the server keeps serving whatever a run record holds
                    refresh = max(1, self.args.refresh)
                    self.html = (f"<!doctype html><meta http-equiv='refresh' content='{refresh}'>"
                                 f"<p>hpeft dashboard: {html.escape(str(err))}; this page refreshes as runs land.</p>")
                self.stamp = stamp
            return self.html


def dashboard_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hpeft dashboard", description="Serve the report on 127.0.0.1, rebuilt as runs land.")
    _sources(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only); another one serves the "
                             "page, with every run's names and metrics, to whoever reaches it")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--refresh", type=int, default=30, help="seconds between the page's reloads (at least 1)")
    parser.add_argument("--optuna-port", type=int, default=None,
                        help="also start optuna-dashboard for --storage on this port")
    args = parser.parse_args(argv)
    if args.refresh < 1:
        parser.exit(2, f"hpeft dashboard: error: --refresh {args.refresh}: must be at least 1 second\n")
    if args.optuna_port is not None and not args.storage:
        parser.exit(2, "hpeft dashboard: error: --optuna-port needs --storage\n")
    page = _Page(args)
    if args.storage:
        try:
            gather(args)
        except ValueError as err:  # an unreachable storage or unknown study: say so now, not on every page load
            if "no runs" not in str(err):
                parser.exit(2, f"hpeft dashboard: error: {err}\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path not in ("/", "/index.html"):
                self.send_error(404)
                return
            body = page.get().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the terminal for our own lines
            pass

    if args.host not in ("127.0.0.1", "localhost"):  # (the server is IPv4: ::1 would not bind)
        print(f"hpeft dashboard: warning: --host {args.host} serves the dashboard beyond this machine, without "
              "authentication; use an SSH tunnel to 127.0.0.1 where you can", file=sys.stderr, flush=True)
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    optuna = None
    if args.optuna_port is not None:
        exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
        optuna = subprocess.Popen([exe, args.storage, "--host", "127.0.0.1", "--port", str(args.optuna_port)])
        print(f"optuna-dashboard on http://127.0.0.1:{args.optuna_port}", flush=True)
    print(f"hpeft dashboard on http://{args.host}:{server.server_address[1]} (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a kill also stops optuna-dashboard (finally below)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if optuna is not None:
            optuna.terminate()
