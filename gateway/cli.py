"""`python -m gateway serve`: flags generated from the Settings fields, so both stay in sync."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from typing import Any, get_args, get_origin

from gateway.admin_cli import add_models_command, run_models_command
from gateway.settings import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantry", description="OpenAI-compatible gateway for local HF models.")
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
        kwargs["help"] += f" [env GANTRY_{name.upper()}; default: {field.get_default(call_default_factory=True)!r}]"
        serve.add_argument(_flag(name), **kwargs)
    add_models_command(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        raise SystemExit(run_models_command(args))
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from gateway.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
