"""A real S3-compatible server (moto's server mode) on a free loopback port, for the object-store tests and
`just bench-store`: obstore talks S3 over HTTP to it as it does to AWS; nothing in the client is mocked."""
from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from typing import Iterator

__all__ = ["loopback_s3"]


@contextlib.contextmanager
def loopback_s3(bucket: str = "bucket") -> Iterator[str]:
    """`s3://<bucket>` on a moto server started for the block; the environment obstore reads (credentials,
    endpoint, plain HTTP) points at it meanwhile and is restored after."""
    from moto.server import ThreadedMotoServer  # a dev dependency

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT"))
        yield f"s3://{bucket}"
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
