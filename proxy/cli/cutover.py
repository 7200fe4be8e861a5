"""The cutover commands of the CLI, talking to a running proxy's admin API over HTTP.

    serving-proxy status [MODEL] [--json]
    serving-proxy cutover MODEL [PERCENT] [--shadow PERCENT] [--reason TEXT] [--force]
    serving-proxy promote MODEL [--reason TEXT] [--force]
    serving-proxy pause|resume MODEL [--reason TEXT]
    serving-proxy rollback MODEL [--to zero|last_good] [--reason TEXT]
    serving-proxy history MODEL [--limit N]
    serving-proxy replicas [--json]

The proxy is `--url` (default `$SERVING_PROXY_URL`, else http://127.0.0.1:8080); the token
is `$SERVING_PROXY_ADMIN_TOKEN`, never a flag, so it stays out of shell history and `ps`.
httpx is the control-plane client (the hot path has its own: proxy/upstream/http1.py).

Raising a weight by hand (`cutover` upwards, `promote`) of a model with `rollout.probe`
runs the probe first: its result is printed, and a failure refuses the change (exit 1,
the probe's note on stderr) unless `--force`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from proxy import jsoncodec
from proxy.cli.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, URL_ENV, AdminClient, CliError
from proxy.cli.table import table_lines
from proxy.config import ADMIN_TOKEN_ENV


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100: {text!r}")
    return value


FORCE_HELP = "raise the weight even if the model's readiness probe fails"


def add_admin_commands(sub: Any) -> None:
    """Add the cutover subcommands to the `serving-proxy` parser's subparsers."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url",
            default=None,
            help=f"the proxy's base URL (default: ${URL_ENV}, else {DEFAULT_URL})",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help=f"seconds to wait for the proxy (default {DEFAULT_TIMEOUT_S:g}; a change "
            "that runs the model's readiness probe also waits for the probe's timeout_s)",
        )
        parser.set_defaults(func=run_admin_command)

    status = sub.add_parser("status", help="show every model's weights, rollout and parity")
    status.add_argument("model", nargs="?")
    status.add_argument("--json", action="store_true", help="print the admin API's JSON")
    common(status)
    status.set_defaults(admin="status")

    cutover = sub.add_parser("cutover", help="set a model's serverless (and shadow) percent")
    cutover.add_argument("model")
    cutover.add_argument("percent", nargs="?", type=_percent, help="serverless_percent 0..100")
    cutover.add_argument("--shadow", type=_percent, help="shadow_percent 0..100")
    cutover.add_argument("--reason", default="", help="recorded in the audit log")
    cutover.add_argument("--force", action="store_true", help=FORCE_HELP)
    common(cutover)
    cutover.set_defaults(admin="cutover")

    for move, text in (
        ("promote", "go to the next rollout step now"),
        ("pause", "stop the rollout's automatic steps (gates still roll back)"),
        ("resume", "run the rollout again from the current weight"),
        ("rollback", "send the model's traffic back to legacy now"),
    ):
        parser = sub.add_parser(move, help=text)
        parser.add_argument("model")
        parser.add_argument("--reason", default="", help="recorded in the audit log")
        if move == "rollback":
            parser.add_argument("--to", choices=("zero", "last_good"), default=None)
        if move == "promote":
            parser.add_argument("--force", action="store_true", help=FORCE_HELP)
        common(parser)
        parser.set_defaults(admin=move)

    history = sub.add_parser("history", help="a model's changes, newest first")
    history.add_argument("model")
    history.add_argument("--limit", type=int, default=20)
    common(history)
    history.set_defaults(admin="history")

    replicas = sub.add_parser("replicas", help="every replica's record, and who leads the rollout")
    replicas.add_argument("--json", action="store_true", help="print the admin API's JSON")
    common(replicas)
    replicas.set_defaults(admin="replicas")


def _call(client: AdminClient, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The admin API's reply; every cutover command needs the token, so none is sent without."""
    if client.token is None:
        raise CliError(f"set {ADMIN_TOKEN_ENV} to the proxy's admin token", 2)
    return client.request(method, path, body)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:g}%"


# What a move prints when the proxy applied it but its state store is out (HTTP 202).
NOT_PERSISTED = (
    "not persisted yet: the proxy's state store is unreachable. The change is in force on "
    "the replica that answered and is stored when the store is back; other replicas follow then."
)


def _note(view: Mapping[str, Any]) -> str:
    note = ""
    rollout = view.get("rollout")
    if rollout:
        evaluation = rollout.get("evaluation")
        note = str(evaluation["reason"]) if evaluation else str(rollout.get("reason") or "")
    if view.get("persisted") is False:
        note = f"NOT PERSISTED (state store unreachable); {note}".rstrip("; ")
    window = view.get("window") or {}
    if window.get("shared") is False:
        # The gates and the parity shown are the answering replica's own traffic only.
        note = f"THIS REPLICA'S WINDOW ONLY (state store unreachable); {note}".rstrip("; ")
    return note


def print_status(views: list[Mapping[str, Any]], out: TextIO) -> None:
    """A table: one line per model."""
    rows = []
    for view in views:
        parity = view.get("parity", {})
        rate = parity.get("rate")
        rollout = view.get("rollout")
        rows.append(
            (
                view["model"],
                _pct(view["serverless_percent"]),
                _pct(view["shadow_percent"]),
                "-" if not rollout else f"{rollout['status']}",
                "-" if rate is None else f"{rate:.4f} of {parity.get('compared', 0)}",
                _note(view),
            )
        )
    header = ("MODEL", "SERVERLESS", "SHADOW", "ROLLOUT", "PARITY", "NOTE")
    for line in table_lines(header, rows, indent="", align="l" * len(header)):
        print(line, file=out)


def probe_line(probe: Mapping[str, Any]) -> str:
    """What a change that ran the readiness probe says about it."""
    note = str(probe["note"])
    return f"{note}; raised anyway (--force)" if probe.get("forced") else note


def probe_wait(client: AdminClient, args: argparse.Namespace) -> AdminClient:
    """The client for a change that may run the model's readiness probe: the proxy answers
    once the probe has, so without `--timeout` it waits for the probe's `timeout_s` too
    (otherwise the CLI would give up on a slow probe while the change still goes ahead)."""
    if args.timeout is not None:
        return client
    rollout = _call(client, "GET", f"/admin/models/{args.model}").get("rollout") or {}
    probe_s = rollout.get("probe_timeout_s")
    if not isinstance(probe_s, int | float):
        return client
    return AdminClient(client.base_url, client.token, client.timeout + probe_s)


def print_history(data: Mapping[str, Any], out: TextIO) -> None:
    for entry in data["history"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        old = entry.get("old") or {}
        new = entry["new"]
        marker = "  <- ROLLBACK" if entry["action"] == "rollback" else ""
        where = f"  [on {entry['replica']}]" if entry.get("replica") else ""
        print(
            f"{when}  {entry['action']:<8} {entry['actor']:<10} "
            f"{_pct(old.get('serverless_percent'))} -> {_pct(new.get('serverless_percent'))}"
            f"  {entry['reason']}{where}{marker}",
            file=out,
        )


def _leader(client: AdminClient) -> dict[str, Any] | None:
    """`GET /admin/leader`, or None when the proxy cannot ask its store who leads."""
    try:
        leader: dict[str, Any] = _call(client, "GET", "/admin/leader")
    except CliError as exc:
        if exc.status != 503:
            raise
        return None
    return leader


def _ago(now: float, then: Any) -> str:
    return "-" if not isinstance(then, int | float) else f"{max(0.0, now - then):.1f} s ago"


def print_replicas(
    data: Mapping[str, Any], leader: Mapping[str, Any] | None, out: TextIO, now: float
) -> None:
    """A table: one line per replica (the one that answered marked `*`), then who leads."""
    rows = []
    for record in data["replicas"]:
        notes = [
            note
            for note, on in (("leader", record.get("leader")), ("STALE", record.get("stale")))
            if on
        ]
        mark = " *" if record["replica_id"] == data["replica_id"] else ""
        rows.append(
            (
                f"{record['replica_id']}{mark}",
                str(record.get("host", "-")),
                str(record.get("version", "-")),
                str(record.get("state_version", "-")),
                _ago(now, record.get("last_heartbeat")),
                str(record.get("in_flight", "-")),
                ", ".join(notes),
            )
        )
    header = ("REPLICA", "HOST", "VERSION", "STATE", "HEARTBEAT", "IN-FLIGHT", "NOTE")
    for line in table_lines(header, rows, indent="", align="l" * len(header)):
        print(line, file=out)
    if not data["store_reachable"]:
        print("state store unreachable: this replica's own record only", file=out)
    if leader is None:
        print("leader: unknown (the state store did not answer)", file=out)
    elif leader.get("replica_id") is None:
        print("leader: none (no replica holds the rollout lease)", file=out)
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(leader["since"]))
        print(
            f"leader: {leader['replica_id']} since {since} "
            f"(fencing token {leader['fencing_token']})",
            file=out,
        )


def run_admin_command(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run one cutover subcommand; the exit status (0 ok, 1 refused or unreachable, 2 usage)."""
    env = os.environ if environ is None else environ
    stream = sys.stdout if out is None else out
    command: str = args.admin
    client = AdminClient.from_environment(
        args.url, env, DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    )
    try:
        if command == "status":
            if args.model:
                views = [_call(client, "GET", f"/admin/models/{args.model}")]
            else:
                views = _call(client, "GET", "/admin/models")["models"]
            if args.json:
                print(jsoncodec.dumps(views if not args.model else views[0]).decode(), file=stream)
            else:
                print_status(views, stream)
            return 0
        if command == "cutover":
            body: dict[str, Any] = {}
            if args.percent is not None:
                body["serverless_percent"] = args.percent
            if args.shadow is not None:
                body["shadow_percent"] = args.shadow
            if not body:
                raise CliError("give PERCENT and/or --shadow PERCENT", 2)
            if args.reason:
                body["reason"] = args.reason
            if args.force:
                body["force"] = True
            if args.percent is not None:
                client = probe_wait(client, args)
            view = _call(client, "PUT", f"/admin/models/{args.model}", body)
        elif command == "replicas":
            data = _call(client, "GET", "/admin/replicas")
            leader = _leader(client)
            if args.json:
                print(jsoncodec.dumps({**data, "leader": leader}).decode(), file=stream)
            else:
                print_replicas(data, leader, stream, time.time())
            return 0
        elif command == "history":
            data = _call(client, "GET", f"/admin/models/{args.model}/history?limit={args.limit}")
            print_history(data, stream)
            return 0
        else:
            body = {"reason": args.reason} if args.reason else {}
            if command == "rollback" and args.to:
                body["to"] = args.to
            if command == "promote":
                client = probe_wait(client, args)
                if args.force:
                    body["force"] = True
            view = _call(client, "POST", f"/admin/models/{args.model}/{command}", body)
        if view.get("probe"):
            print(probe_line(view["probe"]), file=stream)
        print_status([view], stream)
        if view.get("persisted") is False:
            print(f"{command} {args.model}: {NOT_PERSISTED}", file=stream)
        return 0
    except CliError as exc:
        print(f"serving-proxy {command}: {exc}", file=sys.stderr)
        return exc.code
