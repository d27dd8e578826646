"""moto server plugin: S3 PutObject checks the checksum it is sent, and conditional writes are atomic.

Two places where moto 5.2.5's S3 is weaker than S3, and the SageMaker deployer relies on S3:

* A PutObject with `x-amz-checksum-sha256` (or `-sha1`, `-crc32`) is stored with that value without
  comparing it to the body (moto's own code: "TODO: AWS computes the provided value and verifies it"), so a
  writer could store other bytes under an archive's checksum. S3 refuses such a request with 400 `BadDigest`
  ("The SHA256 you specified did not match the calculated checksum."), which is why the deployer may trust
  `ChecksumSHA256` from HeadObject. Here the value is checked against the body as S3 does.
* PutObject / DeleteObject with `If-None-Match: *` or `If-Match: <ETag>` check the condition and then write, in
  two steps, on a threaded server, so two conditional writes racing for one key could both succeed. On S3 the
  check and the write are one atomic operation. Here object writes and deletes run one at a time.

Loaded into the shared test moto server by `moto_sagemaker_update` (import this module in any server process
that needs it). Other checksum algorithms (CRC32C, CRC64NVME) are left unchecked: moto computes them with a
CRC32 fallback when their optional libraries are missing, so a check could refuse a correct upload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from typing import Any

from moto.s3.exceptions import S3ClientError
from moto.s3.responses import S3Response

_WRITES = threading.Lock()
_ALGORITHMS = {
    "sha256": ("SHA256", lambda b: hashlib.sha256(b).digest()),
    "sha1": ("SHA1", lambda b: hashlib.sha1(b).digest()),  # noqa: S324 - S3's own checksum algorithm
    "crc32": ("CRC32", lambda b: binascii.crc32(b).to_bytes(4, "big")),
}


class BadDigest(S3ClientError):
    code = "BadDigest"

    def __init__(self, algorithm: str) -> None:
        super().__init__(f"The {algorithm} you specified did not match the calculated checksum.")


def _check_digest(response: S3Response) -> None:
    headers = {k.lower(): v for k, v in response.headers.items()}
    if "aws-chunked" in str(headers.get("content-encoding", "")):
        return  # a trailer checksum: moto decodes the chunks itself
    body = response.body if isinstance(response.body, bytes) else str(response.body or "").encode()
    for suffix, (name, digest) in _ALGORITHMS.items():
        sent = headers.get(f"x-amz-checksum-{suffix}")
        if sent and sent != base64.b64encode(digest(body)).decode():
            raise BadDigest(name)


_put_object = S3Response.put_object
_delete_object = S3Response.delete_object


def _put(self: S3Response) -> Any:
    with _WRITES:
        _check_digest(self)
        return _put_object(self)


def _delete(self: S3Response) -> Any:
    with _WRITES:
        return _delete_object(self)


S3Response.put_object = _put
S3Response.delete_object = _delete
