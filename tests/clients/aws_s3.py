"""boto3 as an agent holding dummy keys, through warden (HTTPS_PROXY, AWS_CA_BUNDLE from the
environment): PutObject (the current default shape: aws-chunked body with a CRC32 trailer), a
GetObject of it, and a presigned GET URL fetched through the same proxy. Prints one JSON line:
what was sent and what came back, or the error code.

usage: aws_s3.py <s3 endpoint url> <presign endpoint url> <bucket> <key>
"""
import io
import json
import os
import sys

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, presign_endpoint, bucket, key = sys.argv[1:5]
config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
common = dict(
    region_name="us-east-1",
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    config=config,
)
s3 = boto3.client("s3", endpoint_url=endpoint, **common)
sent = {}


def record(request, **_):
    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    sent[request.method] = {k.lower(): text(v) for k, v in request.headers.items()}


s3.meta.events.register("before-send.s3.*", record)
body = b"hello from the agent " * 512
out = {}
try:
    s3.put_object(Bucket=bucket, Key=key, Body=io.BytesIO(body))
    out["put"] = "ok"
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    out["get_matches"] = got == body
except ClientError as e:
    out["error"] = e.response["Error"]["Code"]
out["sent"] = sent
if presign_endpoint != "-":
    # SigV4 query signing, and the legacy SigV2 form botocore still makes by default for a
    # custom endpoint (which warden cannot re-sign).
    for name, version in [("presigned", "s3v4"), ("presigned_v2", "s3")]:
        signing = dict(common, config=config.merge(Config(signature_version=version)))
        presigner = boto3.client("s3", endpoint_url=presign_endpoint, **signing)
        url = presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600
        )
        proxies = {"https": os.environ["HTTPS_PROXY"]}
        r = requests.get(url, proxies=proxies, verify=os.environ["AWS_CA_BUNDLE"], timeout=30)
        out[name] = {"status": r.status_code, "body": r.text[:200]}
print(json.dumps(out))
