"""An MCP origin for the integration tests: the official SDK's MCPServer over its Streamable
HTTP transport (SSE answers, sessions for the initialize handshake and the 2026-07-28
per-request protocol alike), served by uvicorn over TLS on 127.0.0.1:0 at /mcp, for host
mcp.test. A bearer check in front of it stands for a real server's authentication.

Usage: mcp_server.py CERT KEY, with the expected bearer secret in MCP_ORIGIN_SECRET (the
origin's side of the credential warden injects; the client never holds it).

Tools: echo(text), delete_all() (which warden's policy denies), count(n) (reports progress n
times before it answers, so its answer is an SSE stream).

Stdout, one JSON object a line: first {"port": N}; then {"http": METHOD, "authorized": bool,
"mcp_method": header or null, "session": bool} for every HTTP request, printed before it is
served, and {"tool": NAME} for every tool run. The server stops when its standard input
closes, so the test reads every line to EOF and knows it has seen every request.
"""

import asyncio
import json
import os
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

SECRET = os.environ["MCP_ORIGIN_SECRET"]


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


server = MCPServer("warden-test")


@server.tool()
def echo(text: str) -> str:
    """Returns its text."""
    emit({"tool": "echo"})
    return text


@server.tool()
def delete_all() -> str:
    """Deletes everything (warden's policy denies it)."""
    emit({"tool": "delete_all"})
    return "deleted everything"


@server.tool()
async def count(n: int, ctx: Context) -> str:
    """Reports progress n times, then answers."""
    emit({"tool": "count"})
    for i in range(n):
        await ctx.report_progress(i + 1, n)
        await asyncio.sleep(0.01)
    return f"counted {n}"


app = server.streamable_http_app(
    json_response=False,
    transport_security=TransportSecuritySettings(allowed_hosts=["mcp.test:*"]),
)


async def guarded(scope, receive, send):
    """Records the request and refuses it 401 unless it carries the expected bearer."""
    if scope["type"] != "http":
        return await app(scope, receive, send)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    authorized = headers.get("authorization") == f"Bearer {SECRET}"
    emit(
        {
            "http": scope["method"],
            "authorized": authorized,
            "mcp_method": headers.get("mcp-method"),
            "session": "mcp-session-id" in headers,
        }
    )
    if not authorized:
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await app(scope, receive, send)


async def main():
    cert, key = sys.argv[1], sys.argv[2]
    config = uvicorn.Config(
        guarded, host="127.0.0.1", port=0, ssl_certfile=cert, ssl_keyfile=key, log_level="warning"
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.02)
    emit({"port": srv.servers[0].sockets[0].getsockname()[1]})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    srv.should_exit = True
    await task


asyncio.run(main())
