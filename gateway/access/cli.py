"""`python -m gateway keys create|list`: manage the keys file (GANTRY_KEYS_FILE or --keys-file).

`create` prints the new key once, on stdout; only its SHA-256 is written. A running server picks the
change up by itself (it re-reads the file when it changes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.access.keys import KeyEntry, append_key, hash_key, new_key, read_keys_file


def add_keys_command(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser(
        "keys",
        help="Create and list API keys (the keys file).",
        description="Manage the API keys file the server reads (GANTRY_KEYS_FILE). Keys are stored as SHA-256 "
        "digests; `create` prints the new key once.",
    )
    keys.add_argument(
        "--keys-file",
        type=Path,
        default=os.environ.get("GANTRY_KEYS_FILE"),
        help="The keys file (YAML) [env GANTRY_KEYS_FILE].",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="Create a key: print it once, store its hash.")
    create.add_argument("--name", required=True, help="Name shown in logs and metrics instead of the key.")
    create.add_argument("--models", nargs="+", help="Model ids the key may use (default: every non-private one).")
    create.add_argument("--rpm", type=int, help="Requests per minute (default: the server's default_rpm).")
    create.add_argument("--tpm", type=int, help="Tokens per minute (default: the server's default_tpm).")
    create.add_argument("--max-concurrent", type=int, help="Requests in flight (default: the server's default).")
    create.add_argument("--expires", help="Expiry as an ISO 8601 date or time (UTC unless a zone is given).")
    create.add_argument("--admin", action="store_true", help="May use every model and /admin.")
    actions.add_parser("list", help="Names, models, limits and expiry of every key (never the keys).")


def run_keys_command(args: argparse.Namespace) -> int:
    if args.keys_file is None:
        sys.stderr.write("error: give --keys-file or set GANTRY_KEYS_FILE\n")
        return 2
    path = Path(args.keys_file).expanduser()
    try:
        if args.action == "list":
            for entry in read_keys_file(path):
                sys.stdout.write(entry.model_dump_json(exclude={"sha256"}, exclude_none=True) + "\n")
            return 0
        key = new_key()
        entry = KeyEntry(
            name=args.name,
            sha256=hash_key(key),
            models=args.models,
            rpm=args.rpm,
            tpm=args.tpm,
            max_concurrent=args.max_concurrent,
            expires=args.expires,
            admin=args.admin,
        )
        append_key(path, entry)
    except ValueError as exc:  # pydantic's ValidationError included
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(key + "\n")
    sys.stderr.write(f"key {entry.name!r} added to {path}; it is shown only now.\n")
    return 0
