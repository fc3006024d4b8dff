"""`python -m gateway models list|load|unload|add|remove`: the /admin API from a shell (httpx)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx
import yaml

DEFAULT_URL = "http://127.0.0.1:8000"
COLUMNS = ("id", "kind", "state", "in_use", "loads", "load_seconds", "memory_bytes", "error")


def add_models_command(commands: argparse._SubParsersAction) -> None:
    """Register the `models` subcommand on the main parser."""
    models = commands.add_parser(
        "models",
        help="Manage the models of a running server (/admin API).",
        description="List, load, unload, add and remove models of a running Gantry server through its /admin "
        "API. The admin key comes from --admin-key or GANTRY_ADMIN_KEY.",
    )
    models.add_argument("--url", default=os.environ.get("GANTRY_URL", DEFAULT_URL), help="Server base URL.")
    models.add_argument(
        "--admin-key", default=os.environ.get("GANTRY_ADMIN_KEY"), help="The server's admin key (Bearer token)."
    )
    models.add_argument("--timeout", type=float, default=600.0, help="Seconds to wait for the server's answer.")
    models.add_argument("--json", action="store_true", help="Print the server's JSON instead of a table.")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="Every model with its state.")
    for name, text in (("load", "Load a model now (retries a failed one)."), ("unload", "Unload a model.")):
        action = actions.add_parser(name, help=text)
        action.add_argument("model_id")
    actions.choices["unload"].add_argument("--force", action="store_true", help="Abort running requests.")
    add = actions.add_parser("add", help="Register a model (the models file's fields); kept across restarts.")
    add.add_argument("name", help="Model id.")
    add.add_argument("source", help="embedded, a directory, a .gguf file or a Hugging Face id.")
    add.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Another field, value in YAML (repeatable): --set keep_alive=5m --set 'aliases=[a, b]'.",
    )
    remove = actions.add_parser("remove", help="Unload and forget a model.")
    remove.add_argument("model_id")
    remove.add_argument("--force", action="store_true", help="Abort running requests.")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": args.name, "source": args.source}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        spec[key.strip()] = yaml.safe_load(value)
    return spec


def _request(args: argparse.Namespace) -> httpx.Response:
    headers = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout) as client:
        if args.action == "list":
            return client.get("/admin/models")
        if args.action == "add":
            return client.post("/admin/models", json=_spec(args))
        force = {"force": "true"} if getattr(args, "force", False) else {}
        path = f"/admin/models/{args.model_id}"
        if args.action == "remove":
            return client.delete(path, params=force)
        return client.post(f"{path}/{args.action}", params=force)


def _write(stream: Any, text: str) -> None:
    """Command output (not logging): the table or JSON on stdout, errors on stderr."""
    stream.write(text + "\n")


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in COLUMNS] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def run_models_command(args: argparse.Namespace) -> int:
    try:
        response = _request(args)
    except httpx.HTTPError as exc:
        _write(sys.stderr, f"error: cannot reach {args.url}: {exc}")
        return 2
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.status_code >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        _write(sys.stderr, f"error: HTTP {response.status_code}: {message or response.text}")
        return 1
    if args.json:
        _write(sys.stdout, json.dumps(body, indent=2))
    elif args.action == "list":
        _write(sys.stdout, _table(body["data"]))
    elif args.action == "remove":
        _write(sys.stdout, f"removed {body['id']}")
    else:
        _write(sys.stdout, _table([body]))
    return 0
