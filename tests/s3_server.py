"""A throwaway S3-compatible server on loopback for the off-site tests: moto's server mode in a thread, on
127.0.0.1 and a free port, with its request signing checked.

moto accepts any credentials unless told otherwise: after the setup (a bucket, a user with an access key
allowed s3:*), its /moto-api/reset-auth turns authentication on, so a wrong secret key is refused as a
real store refuses it. moto keeps its state per process: one server at a time (a module-scoped fixture).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto import settings as moto_settings
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self, secret_key: str | None = None) -> Any:
        """A client with the server's credentials (or a wrong secret), straight to the endpoint."""
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key)

    def env(self) -> dict[str, str]:
        """The environment boto3's chain reads the credentials from (and nothing from ~/.aws)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_server(bucket: str = "bacpipes-offsite") -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        setup = {"endpoint_url": endpoint, "region_name": REGION,
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="backup")
        iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        _set_auth(endpoint, 0)  # from now on every request must be signed with a known key
        yield S3Server(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")  # moto's default, for whoever is next
        server.stop()


def _set_auth(endpoint: str, unauthenticated_requests: int) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth",
                                     data=str(unauthenticated_requests).encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
