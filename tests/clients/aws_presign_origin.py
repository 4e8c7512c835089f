"""A TLS origin that checks presigned S3 URLs the way S3 does, with botocore's own presigner:
a request passes only if its query signature is the one the role's credentials (given in the
environment) make for it. moto cannot check presigned URLs while it checks IAM, so this stands
in for S3 on the presigned GET. Prints {"port": N}, then one JSON line per request received.

usage: aws_presign_origin.py <cert> <key>; env ROLE_ACCESS_KEY_ID, ROLE_SECRET_ACCESS_KEY,
ROLE_SESSION_TOKEN
"""
import http.server
import json
import os
import ssl
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CREDS = Credentials(
    os.environ["ROLE_ACCESS_KEY_ID"],
    os.environ["ROLE_SECRET_ACCESS_KEY"],
    os.environ["ROLE_SESSION_TOKEN"],
)
SIGNATURE = {
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
    "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
}


def verified(method, host, target):
    parts = urlsplit(target)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    got = dict(pairs)
    if not SIGNATURE <= got.keys():
        return False
    rest = [(k, v) for k, v in pairs if k not in SIGNATURE]
    url = f"https://{host}{parts.path}" + ("?" + urlencode(rest) if rest else "")
    region = got["X-Amz-Credential"].split("/")[2]
    auth = S3SigV4QueryAuth(CREDS, "s3", region, expires=int(got["X-Amz-Expires"]))
    req = AWSRequest(method=method, url=url)
    req.context["timestamp"] = got["X-Amz-Date"]
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    want = auth.signature(auth.string_to_sign(req, canonical), req)
    return (
        want == got["X-Amz-Signature"]
        and got["X-Amz-Credential"].startswith(CREDS.access_key + "/")
        and got["X-Amz-Security-Token"] == CREDS.token
    )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ok = verified("GET", self.headers["Host"], self.path)
        print(json.dumps({"path": urlsplit(self.path).path, "verified": ok}), flush=True)
        body = b"presigned-ok" if ok else b"SignatureDoesNotMatch"
        self.send_response(200 if ok else 403)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(json.dumps({"port": server.server_address[1]}), flush=True)
# Ends when stdin closes (the test is done), so nothing outlives the test.
import threading
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
