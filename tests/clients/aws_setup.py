"""Prepares moto (server mode) for the AWS tests, talking to it directly while it still
accepts unsigned calls: an IAM user with an access key (warden's source keys), a role the user
may assume with S3 rights, and a bucket. Then it switches moto's IAM checks on, so from here
every call must carry a valid SigV4 signature of known keys. Prints the keys and the role ARN
as one JSON line.

usage: aws_setup.py <moto https url> <ca file>
"""
import json
import sys
import boto3
import requests
from botocore.config import Config

url, ca = sys.argv[1], sys.argv[2]
common = dict(
    region_name="us-east-1",
    aws_access_key_id="AKIASETUPSETUPSETUP1",
    aws_secret_access_key="setup",
    verify=ca,
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
iam = boto3.client("iam", endpoint_url=url, **common)
s3 = boto3.client("s3", endpoint_url=url, **common)

user = iam.create_user(UserName="warden-source")["User"]
key = iam.create_access_key(UserName="warden-source")["AccessKey"]
allow_all = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
})
iam.put_user_policy(UserName="warden-source", PolicyName="assume", PolicyDocument=allow_all)
trust = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}],
})
role = iam.create_role(RoleName="agent", AssumeRolePolicyDocument=trust)["Role"]
s3_only = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
})
iam.put_role_policy(RoleName="agent", PolicyName="s3", PolicyDocument=s3_only)
s3.create_bucket(Bucket="agent-bucket")

# From now on moto checks every signature and every permission.
resp = requests.post(url + "/moto-api/reset-auth", data=b"0", verify=ca, timeout=30)
assert resp.status_code == 200, resp.text

print(json.dumps({
    "access_key_id": key["AccessKeyId"],
    "secret_access_key": key["SecretAccessKey"],
    "role_arn": role["Arn"],
}))
