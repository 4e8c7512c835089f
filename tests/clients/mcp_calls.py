"""The official MCP SDK's client through warden: lists the tools, calls an allowed one, a
denied one and one whose answer streams (progress, then the result), and prints what it got
as one JSON object.

Usage: mcp_calls.py URL MODE, MODE `auto` (the SDK's default: `server/discover`, the
2026-07-28 per-request protocol with mcp-method / mcp-name headers) or `legacy` (the
initialize handshake, Mcp-Session-Id, 2025-11-25). The proxy comes from HTTPS_PROXY, and
warden's CA from WARDEN_CA_FILE is the only trust.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return {
        "is_error": result.is_error,
        "text": " ".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
    }


async def main():
    url, mode = sys.argv[1], sys.argv[2]
    tls = ssl.create_default_context(cafile=os.environ["WARDEN_CA_FILE"])
    http = httpx2.AsyncClient(verify=tls, timeout=httpx2.Timeout(30, read=60))
    out = {}
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            out["protocol_version"] = client.protocol_version
            out["tools"] = [t.name for t in (await client.list_tools()).tools]
            out["echo"] = text_of(await client.call_tool("echo", {"text": "hello"}))
            out["denied"] = text_of(await client.call_tool("delete_all", {}))
            progress = []

            async def on_progress(value, total, message):
                progress.append(value)

            out["count"] = text_of(await client.call_tool("count", {"n": 3}, progress_callback=on_progress))
            out["progress"] = progress
    print(json.dumps(out), flush=True)


asyncio.run(main())
