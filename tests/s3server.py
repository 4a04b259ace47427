"""A real S3 API server for the tests: moto's server mode (``moto[server]``, installed by the
project's test extra) started on a free loopback port, and small helpers to put a local tree in a
bucket and read objects back with boto3 (a client independent of the code under test)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY, SECRET_KEY, REGION = "segops-test-key", "segops-test-secret", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def beam_args(self) -> list[str]:
        """Beam's documented S3 options, as a user passes them after ``--``."""
        return [f"--s3_endpoint_url={self.endpoint}", f"--s3_access_key_id={ACCESS_KEY}",
                f"--s3_secret_access_key={SECRET_KEY}", f"--s3_region_name={REGION}"]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint}  # fmt: skip

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)  # fmt: skip

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload_tree(self, local: Path, uri: str) -> int:
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        client, count = self.client(), 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}".lstrip("/"))
            count += 1
        return count

    def keys(self, uri: str) -> list[str]:
        """Relative keys under ``uri`` (a listing only: safe while a run is writing)."""
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        return [item["Key"][len(prefix.rstrip("/")) + 1 :] for page in pages for item in page.get("Contents", [])]

    def objects(self, uri: str) -> dict[str, bytes]:
        """Relative key -> bytes of every object under ``uri``."""
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        client, out = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                out[key[len(prefix.rstrip("/")) + 1 :]] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_s3_server(log_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server did not start: {(log_dir / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
