"""Checksummed downloads.

A download is written through ``io.atomic_path``: a failed one leaves nothing at the
destination, so Snakemake never mistakes a partial file for output. Archives are extracted by
``archives.safe_extract``.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path

from .errors import ChecksumError, DataError, one_line
from .io import atomic_path

CHUNK_SIZE = 1 << 20  # 1 MiB
_SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
_USER_AGENT = "transfergrid (urllib)"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so large archives never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _normalised_sha256(url: str, sha256: object) -> str:
    if not isinstance(sha256, str) or not _SHA256_PATTERN.fullmatch(sha256.strip()):
        raise DataError(
            f"download of {url}: sha256 must be 64 hex characters, got {sha256!r} "
            "(a checksum is required so a changed or truncated file is never used)"
        )
    return sha256.strip().lower()


def _network_reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {one_line(error.reason)}"
    if isinstance(error, urllib.error.URLError):
        return one_line(error.reason)
    return one_line(error) or type(error).__name__


def _stream_to(url: str, file_path: Path, timeout: float) -> str:
    """Copy ``url`` into ``file_path``; return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(file_path, "wb") as out:
            while chunk := response.read(CHUNK_SIZE):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        # ValueError: urlopen's answer to a malformed or unsupported URL.
        raise DataError(f"download of {url} failed: {_network_reason(error)}") from error
    return digest.hexdigest()


def download(url: str, sha256: str, dest: str | Path, timeout: float = 60) -> Path:
    """Download ``url`` (http, https or file://) to ``dest`` and verify its sha256.

    An existing ``dest`` with the right checksum is kept as is (no network access).
    On any failure nothing is left at ``dest``.
    """
    expected = _normalised_sha256(url, sha256)
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == expected:
        return dest
    # A stale file at dest must not survive a failed attempt and pass for the real one.
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    with atomic_path(dest) as tmp:
        actual = _stream_to(url, tmp, timeout)
        if actual != expected:
            raise ChecksumError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}")
    return dest
