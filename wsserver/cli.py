"""The `beseda` console script: serve, migrate, token, chat create, import-twilio."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from . import db
from .auth import ROLES, mint
from .config import Settings
from .logs import setup_logging

log = logging.getLogger("wsserver.cli")


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    changes: dict[str, Any] = {}
    for name in ("host", "ws_port", "http_port", "database_url"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "data_dir", None) is not None:
        changes["data_dir"] = Path(args.data_dir)
    return s.with_(**changes) if changes else s


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _serve(settings: Settings) -> int:
    from .app import Node

    node = Node(settings)
    try:
        await node.start()
    except db.SchemaIncomplete as exc:
        if node.embedded_pg is not None:
            node.embedded_pg.release()
        print(f"beseda: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        if node.embedded_pg is not None:
            node.embedded_pg.release()
        print(
            f"beseda: a port is already in use ({settings.host}: ws {settings.ws_port}, "
            f"http {settings.http_port}); is another `beseda serve` running? "
            "Pick others with --ws-port/--http-port.",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"beseda: ws://{settings.host}:{node.ws_port}/ws  http://{settings.host}:{node.http_port}",
        flush=True,
    )
    await stop.wait()
    log.info("node.draining timeout_s=%s", settings.drain_timeout_s)
    await node.stop()
    if node.embedded_pg is not None:
        node.embedded_pg.release()
    return 0


async def _migrate(settings: Settings) -> int:
    dsn, pg = await db.resolve_database_url(settings)
    try:
        applied = await db.migrate(dsn)
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    finally:
        if pg is not None:
            pg.release()
    return 0


def _parse_users(spec: str) -> list[tuple[int, str]]:
    users: list[tuple[int, str]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        uid, _, role = part.partition(":")
        role = role or "member"
        if role not in ("owner", "admin", "member"):
            raise SystemExit(f"beseda: bad role {role!r} in --users (owner, admin, member)")
        users.append((int(uid), role))
    if not users:
        raise SystemExit("beseda: --users needs at least one ID:ROLE")
    return users


async def _chat_create(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from .store import Store

    dsn, pg = await db.resolve_database_url(settings)
    try:
        await db.migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=Store.connection_init())
        try:
            store = Store(pool)
            chat = await store.create_chat(
                group=args.group,
                type=args.type,
                name=args.name or "",
                users=_parse_users(args.users),
                order_id=args.order_id,
            )
        finally:
            await pool.close()
    finally:
        if pg is not None:
            pg.release()
    print(json.dumps(chat, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beseda", description="Beseda chat server")
    sub = p.add_subparsers(dest="command", required=True)
    # the same two overrides `import-twilio` takes, for every command with a database
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--database-url", help="overrides DATABASE_URL")
    db.add_argument("--data-dir", help="overrides BESEDA_DATA_DIR")

    sp = sub.add_parser("serve", parents=[db],
                        help="run the WebSocket server and the HTTP adapter")
    sp.add_argument("--host")
    sp.add_argument("--ws-port", type=int)
    sp.add_argument("--http-port", type=int)

    sub.add_parser("migrate", parents=[db], help="apply pending migrations and exit")

    tp = sub.add_parser("token", help="print a dev JWT signed with the configured key")
    tp.add_argument("--sub", required=True)
    tp.add_argument("--role", required=True, choices=sorted(ROLES))
    tp.add_argument("--demo", action="store_true")
    tp.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")

    cp = sub.add_parser("chat", help="chat administration")
    csub = cp.add_subparsers(dest="chat_command", required=True)
    cc = csub.add_parser("create", parents=[db], help="create a chat and print it as JSON")
    cc.add_argument("--group", required=True)
    cc.add_argument("--type", required=True, choices=["private", "group"])
    cc.add_argument("--name")
    cc.add_argument("--users", required=True, help="ID:ROLE,... (owner, admin, member)")
    cc.add_argument("--order-id", type=int)

    ip = sub.add_parser("import-twilio", help="import a Twilio Conversations export")
    ip.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import-twilio"]:
        from importer.cli import run as run_import

        return run_import(argv[1:])
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    setup_logging(settings.log_level)
    if args.command == "serve":
        return int(_run(_serve(settings)))
    if args.command == "migrate":
        return int(_run(_migrate(settings)))
    if args.command == "token":
        if not (args.sub.isascii() and args.sub.isdigit()) or args.sub != str(int(args.sub)):
            raise SystemExit("beseda: --sub must be a decimal user id without leading zeros")
        if args.ttl <= 0:
            raise SystemExit("beseda: --ttl must be a positive number of seconds")
        print(mint(settings, args.sub, args.role, demo=args.demo, ttl_s=args.ttl))
        return 0
    if args.command == "chat":
        return int(_run(_chat_create(settings, args)))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
