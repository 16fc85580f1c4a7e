"""The `beseda` console script, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jwt


def _beseda(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsserver.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


def test_token_mints_a_verifiable_dev_token(tmp_path):
    """`beseda token` signs with the configured secret and sets the claims asked for."""
    env = {"BESEDA_JWT_SECRET": "s" * 40, "BESEDA_DATA_DIR": str(tmp_path)}
    out = _beseda(["token", "--sub", "42", "--role", "manager", "--demo", "--ttl", "60"], env)
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), "s" * 40, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["role"] == "manager" and claims["demo"] is True
    assert claims["exp"] - claims["iat"] == 60


def test_token_without_secret_uses_the_generated_dev_key(tmp_path):
    """With no secret configured, a key is generated once in the data folder and reused."""
    env = {"BESEDA_DATA_DIR": str(tmp_path / "d"), "BESEDA_JWT_SECRET": ""}
    first = _beseda(["token", "--sub", "1", "--role", "buyer"], env)
    second = _beseda(["token", "--sub", "1", "--role", "buyer"], env)
    assert first.returncode == 0 and second.returncode == 0
    key = (tmp_path / "d" / "jwt_dev_secret").read_text()
    for out in (first, second):
        assert jwt.decode(out.stdout.strip(), key, algorithms=["HS256"])["sub"] == "1"
    assert oct((tmp_path / "d" / "jwt_dev_secret").stat().st_mode & 0o777) == "0o600"


def test_token_refuses_a_non_numeric_sub(tmp_path):
    out = _beseda(["token", "--sub", "abc", "--role", "buyer"], {"BESEDA_DATA_DIR": str(tmp_path)})
    assert out.returncode != 0 and "decimal" in out.stderr


async def test_migrate_and_chat_create_against_database_url(fresh_db, tmp_path):
    """`migrate` is a no-op on a migrated database; `chat create` prints the chat."""
    env = {"DATABASE_URL": fresh_db, "BESEDA_DATA_DIR": str(tmp_path)}
    out = _beseda(["migrate"], env)
    assert out.returncode == 0 and "up to date" in out.stdout, out.stderr
    # the same with the overrides instead of the environment (as import-twilio takes)
    out = _beseda(["migrate", "--database-url", fresh_db, "--data-dir", str(tmp_path)], {})
    assert out.returncode == 0 and "up to date" in out.stdout, out.stderr
    out = _beseda(
        ["chat", "create", "--group", "order", "--type", "private", "--name", "Заказ 7",
         "--users", "10:owner,11:member", "--order-id", "7"], env,
    )
    assert out.returncode == 0, out.stderr
    chat = json.loads(out.stdout)
    assert chat["name"] == "Заказ 7" and chat["order_id"] == 7 and chat["group"] == "order"
    assert chat["participants"] == [{"user_id": 10, "role": "owner"}, {"user_id": 11, "role": "member"}]


async def test_cli_commands_leave_a_running_servers_embedded_database_up(tmp_path):
    """`chat create` and `migrate` beside `beseda serve` (embedded PostgreSQL, same
    data folder) must not stop the server's database."""
    import asyncio

    import httpx

    from tests.helpers import ServerProcess, WsClient
    from wsserver.auth import mint
    from wsserver.config import Settings

    settings = Settings(data_dir=tmp_path / "data", jwt_secret="s" * 40)
    server = ServerProcess("", settings)
    server.env.pop("DATABASE_URL", None)
    await server.start(timeout=120)
    try:
        env = {"BESEDA_DATA_DIR": str(settings.data_dir), "BESEDA_JWT_SECRET": "s" * 40,
               "DATABASE_URL": ""}
        made = await asyncio.to_thread(
            _beseda, ["chat", "create", "--group", "order", "--type", "private",
                      "--users", "1:owner,2:member"], env)
        assert made.returncode == 0, made.stderr
        assert (await asyncio.to_thread(_beseda, ["migrate"], env)).returncode == 0
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{server.http_port}/readyz")
        assert ready.status_code == 200, ready.text
        client = await WsClient.connect(server.ws_url, mint(settings, 1, "buyer"))
        try:
            ack = await client.ok("message.send", {
                "chat_id": json.loads(made.stdout)["id"], "message_key": "k", "text": "ok"})
            assert ack["seq"] == 1
        finally:
            await client.close()
    finally:
        await server.stop()
