"""`kod-interlink`: serve the InterLink API to the virtual kubelet and route pods to sidecars."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from kod import __version__, errors
from kod.log import configure
from kod.service import serve_app
from kod.settings import load_settings

from interlink.app import create_app
from interlink.settings import DEFAULT_PORT, DEFAULT_SIDECAR_URL, ENV_PREFIX, InterlinkSettings, default_config_file

EPILOG = f"""\
configuration (later wins): built-in defaults, the TOML file, {ENV_PREFIX}* variables, flags.

environment variables:
  {ENV_PREFIX}CONFIG              the config file (default: {default_config_file()})
  {ENV_PREFIX}LISTEN__HOST        TCP address (default 127.0.0.1)
  {ENV_PREFIX}LISTEN__PORT        TCP port (default {DEFAULT_PORT}; 0 = any free port)
  {ENV_PREFIX}LISTEN__SOCKET      unix socket path; when set, interlink listens there instead of TCP
  {ENV_PREFIX}TOKEN_FILE          file with the clients' bearer token (default ~/.config/kod/interlink.token)
  {ENV_PREFIX}TOKEN               the token itself, instead of the file
  {ENV_PREFIX}CREATE_TOKEN        true/false: create a random token file when missing (default true)
  {ENV_PREFIX}SIDECARS            JSON list of sidecars: [{{"name": "docker", "url": "{DEFAULT_SIDECAR_URL}",
                                  "token_file": "...", "match": {{"runtime_class": "...", "labels": {{}},
                                  "annotations": {{}}}}}}]  (default: one "docker" sidecar at {DEFAULT_SIDECAR_URL})
  {ENV_PREFIX}WATCH__HEARTBEAT_SECONDS, {ENV_PREFIX}WATCH__CLIENT_QUEUE, {ENV_PREFIX}WATCH__BACKOFF_SECONDS,
  {ENV_PREFIX}WATCH__SIDECAR_IDLE_SECONDS, {ENV_PREFIX}WATCH__INITIAL_SYNC_SECONDS
  {ENV_PREFIX}PING_TIMEOUT_SECONDS, {ENV_PREFIX}SHUTDOWN_TIMEOUT_SECONDS
  {ENV_PREFIX}LOG_LEVEL           debug, info, warning, error

The API is described by GET /openapi.json and in docs/interlink.md.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of `kod-interlink`."""
    parser = argparse.ArgumentParser(
        prog="kod-interlink",
        description="InterLink service of KubernetesOnDesktop: serves the virtual kubelet the pod "
        "API (create, delete, status, logs, ping, pushed status) and routes each pod to a sidecar.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help=f"TOML config file (default: {default_config_file()})")
    parser.add_argument("--host", help="TCP address to listen on (listen.host)")
    parser.add_argument("--port", type=int, help="TCP port to listen on (listen.port)")
    parser.add_argument("--socket", help="listen on this unix socket instead of TCP (listen.socket)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines even on a terminal")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective settings (without secrets) and exit"
    )
    parser.add_argument("--version", action="version", version=f"kod-interlink {__version__}")
    return parser


def load(args: argparse.Namespace) -> InterlinkSettings:
    """Settings from the file, the environment and the flags."""
    path = args.config or Path(os.environ.get(ENV_PREFIX + "CONFIG") or default_config_file())
    if args.config and not args.config.exists():
        raise errors.InvalidInput(f"config file {args.config} does not exist")
    listen = {"host": args.host, "port": args.port, "socket": args.socket}
    overrides = {"log_level": args.log_level, "listen": {k: v for k, v in listen.items() if v is not None}}
    return load_settings(InterlinkSettings, path, env_prefix=ENV_PREFIX, overrides=overrides)


async def serve(settings: InterlinkSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until `stop` is set), then shut down cleanly."""
    await serve_app(
        create_app(settings),
        settings.listen,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        env_prefix=ENV_PREFIX,
        stop=stop,
        listening="interlink listening",
        stopping="interlink shutting down",
        log_fields={"sidecars": [s.name for s in settings.sidecars]},
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kod-interlink` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load(args)
    except errors.KodError as exc:
        print(f"kod-interlink: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(settings.model_dump_json(indent=2))
        return 0
    configure(level=settings.log_level, json=True if args.log_json else None, component="interlink")
    try:
        asyncio.run(serve(settings))
    except errors.KodError as exc:
        print(f"kod-interlink: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
