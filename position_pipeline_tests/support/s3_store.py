"""An S3-compatible server for the object-store lake tests (system/test_s3_lake.py).

moto's own WSGI app in a werkzeug server on a free port, in a process of its own (some deltalake calls, such as
`DeltaTable.history`, hold the GIL while they wait for the store), with one addition (`S3Store`): a lock around
conditional PUTs. moto 5.2.5 honours PutObject If-None-Match: * (412 when the key exists) but checks and stores in two
steps, so two racing PUTs of one key can both succeed (measured: 2 of 100 rounds of 8 racing PUTs had two winners with
a 1 us thread switch interval). S3 decides put-if-absent atomically; the lock gives moto that guarantee. The store
also records every PUT, so the tests can see that delta-rs committed each Delta version with If-None-Match: *.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
from deltalake import DeltaTable
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from position_pipeline.core import lake

COMMIT_FILE = re.compile(r"/_delta_log/(\d{20})\.json$")
PUTS_PATH = "/_s3_store/puts"  # not S3 paths: "_s3_store" is no valid bucket name
RACE_PATH = "/_s3_store/race"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@dataclass(frozen=True)
class Put:
    """One PUT the store answered: the object path, its If-None-Match header, and the HTTP status."""

    path: str
    if_none_match: str | None
    status: int


@dataclass
class S3Store:
    """moto's S3 as a WSGI app, with conditional PUTs made atomic and every PUT recorded (GET PUTS_PATH lists them).

    A PUT is recorded before its response is sent, so a listing asked for after a write has returned includes it.
    POST RACE_PATH with a count n makes the next n conditional PUTs wait for each other (20 s at most) before they
    are decided: writers that read the same table version then commit the same next version at the same moment,
    which a test cannot otherwise arrange.
    """

    app: DomainDispatcherApplication = field(default_factory=lambda: DomainDispatcherApplication(create_backend_app))
    puts: list[Put] = field(default_factory=list)
    _conditional: threading.Lock = field(default_factory=threading.Lock)
    _race: threading.Barrier | None = None
    _race_left: int = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == PUTS_PATH:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps([p.__dict__ for p in list(self.puts)]).encode()]
        if environ["PATH_INFO"] == RACE_PATH:
            count = int(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            with self._conditional:
                self._race, self._race_left = threading.Barrier(count), count
            start_response("204 No Content", [])
            return []
        if environ["REQUEST_METHOD"] != "PUT":
            return self.app(environ, start_response)
        condition = environ.get("HTTP_IF_NONE_MATCH")
        if condition is not None:
            self._join_race()
        status: list[int] = []

        def recording_start_response(text: str, headers: Any, *args: Any) -> Any:
            status.append(int(text.split()[0]))
            return start_response(text, headers, *args)

        if condition is None:
            body = self.app(environ, recording_start_response)
        else:
            with self._conditional:  # check and store in one step, as S3 does
                body = self.app(environ, recording_start_response)
        self.puts.append(Put(environ["PATH_INFO"], condition, status[0] if status else 0))
        return body

    def _join_race(self) -> None:
        with self._conditional:
            race = self._race
            if race is None:
                return
            self._race_left -= 1
            if self._race_left == 0:
                self._race = None
        # If another racer never comes, each is decided alone after the timeout and the test sees no refused commit.
        with contextlib.suppress(threading.BrokenBarrierError):
            race.wait(timeout=20)


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def serve_s3(ready: Any) -> None:
    """The server process: an S3Store on a free loopback port (sent back through `ready`) until terminated."""
    server = make_server("127.0.0.1", 0, S3Store(), threaded=True, request_handler=_QuietHandler)
    ready.put(server.server_address[1])
    server.serve_forever()


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_REGION"],
        )

    def race_next_commits(self, count: int) -> None:
        """Make the next `count` conditional PUTs (commits) reach the store together."""
        request = urllib.request.Request(self.endpoint + RACE_PATH, data=str(count).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def commits(self, bucket: str) -> list[Put]:
        """The PUTs of Delta commit files (`_delta_log/NNN.json`) in `bucket`, in the order the store answered them."""
        with urllib.request.urlopen(self.endpoint + PUTS_PATH, timeout=10) as response:
            puts = [Put(**p) for p in json.load(response)]
        return [p for p in puts if p.path.startswith(f"/{bucket}/") and COMMIT_FILE.search(p.path)]


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """An S3Store on a free loopback port in a spawned process, terminated on exit."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(target=serve_s3, args=(ready,), name="s3-store", daemon=True)
    process.start()
    try:
        port = ready.get(timeout=30)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.join(timeout=10)


def log_versions(server: S3Server, bucket: str, table: str) -> list[int]:
    """The versions of the commit files in a table's _delta_log, as listed by the store."""
    prefix = f"lake/{lake.SCHEMA_NAME}/{table}/_delta_log/"
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return sorted(int(m.group(1)) for key in keys if (m := COMMIT_FILE.search("/" + key)))


def assert_contiguous_log(server: S3Server, bucket: str, root: str, table: str) -> int:
    """Every version from 0 to the table's current one has exactly one commit file; returns that version."""
    versions = log_versions(server, bucket, table)
    current = DeltaTable(lake.table_uri(root, table), storage_options=lake.storage_options_for(root)).version()
    assert versions == list(range(current + 1))
    return current
