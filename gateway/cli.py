"""`python -m gateway serve`: flags generated from the Settings fields, so both stay in sync."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from adapters import AdapterRegistry
from gateway.access.cli import add_keys_command, run_keys_command
from gateway.access_log import configure_logging
from gateway.admin_cli import add_models_command, run_models_command
from gateway.settings import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def invoked_as(argv0: str | None = None) -> str:
    """The program name as the user typed it: `python -m gateway` or the `gantry` console script."""
    name = Path(argv0 if argv0 is not None else sys.argv[0]).name
    return "python -m gateway" if name in ("__main__.py", "-m", "") else name


def shown_default(value: Any) -> str | None:
    """A default as a user would type it (None: nothing to show)."""
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, BaseModel):
        values = value.model_dump(exclude_none=True)
        return json.dumps(values) if values else None
    if isinstance(value, Path):
        home = Path.home()
        return f"~/{value.relative_to(home)}" if value.is_relative_to(home) else str(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return str(value)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or invoked_as(), description="OpenAI-compatible gateway for local HF models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="Serve models over the OpenAI API.",
        description="Serve models over the OpenAI API. Every option can also be set as GANTRY_<NAME> "
        "(environment or .env); flags win.",
    )
    for name, field in Settings.model_fields.items():
        base = _base_type(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": field.description or name}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(base) is list:
            kwargs["nargs"] = "*"
        elif get_origin(base) is typing.Literal:
            kwargs["choices"] = list(get_args(base))
        elif base in (int, float):
            kwargs["type"] = base
        if name == "family":  # the adapters registry is the list of families
            kwargs["choices"] = AdapterRegistry().names()
            kwargs["metavar"] = "FAMILY"
            kwargs["help"] += f" One of: {', '.join(kwargs['choices'])}."
        default = shown_default(field.get_default(call_default_factory=True))
        kwargs["help"] += f" [env GANTRY_{name.upper()}" + (f"; default: {default}]" if default else "]")
        serve.add_argument(_flag(name), **kwargs)
    add_models_command(commands)
    add_keys_command(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        raise SystemExit(run_models_command(args))
    if args.command == "keys":
        raise SystemExit(run_keys_command(args))
    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    import uvicorn

    from gateway.app import create_app
    from gateway.server import GatewayServer

    app = create_app(settings)
    # The app drains itself within the grace period (gateway/shutdown.py); uvicorn's own timeout only bounds the
    # sockets' last bytes after that, so the process never waits long past the grace period.
    # uvicorn's loggers go through the handler configured above (log_config=None: text or JSON alike); its access
    # log is off: gateway.access logs each request once, with model, tokens and timings (gateway/access_log.py).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    GatewayServer(config, app.state.shutdown).run()
    # Sockets and models are closed. Python's own exit would now garbage-collect and tear down every object
    # transformers, torch and the model left behind: 5-8 s on a busy 2-core machine (1.6 s even after gc.freeze),
    # for memory the OS frees at once. Flush what is buffered and leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
