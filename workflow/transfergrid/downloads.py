"""Checksummed downloads that resume where an interrupted attempt stopped.

The bytes arrive in ``.<name>.part`` next to the destination, which the next attempt resumes with
an HTTP Range request; the destination itself appears only once the whole file matches its
sha256 (through ``io.atomic_path``), so Snakemake never mistakes a partial file for output.
"""

from __future__ import annotations

import hashlib
import http.client
import os
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


def partial_path(dest: Path) -> Path:
    """Where an unfinished download of ``dest`` keeps its bytes for the next attempt: ``.<name>.part``."""
    return dest.with_name(f".{dest.name}.part")


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _open_from(url: str, offset: int, timeout: float):
    """Open ``url`` asking for its bytes from ``offset`` on; return (response, offset its body starts at)."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if offset and error.code == 416:  # the kept bytes are no prefix of the file (it shrank): start over
            error.close()
            return _open_from(url, 0, timeout)
        raise
    if offset and not (response.status == 206 and _range_start(response) == offset):
        if response.status == 206:  # some other range: useless here
            response.close()
            return _open_from(url, 0, timeout)
        return response, 0  # 200 (or a file:// URL): the server ignored Range and sends everything
    return response, offset


def _failure(url: str, partial: Path, reason: str) -> DataError:
    size = partial.stat().st_size if partial.is_file() else 0
    kept = f" ({size} bytes kept in {partial} for the next attempt)" if size else ""
    return DataError(f"download of {url} failed: {reason}{kept}")


def _fetch(url: str, partial: Path, timeout: float, log) -> None:
    """Complete ``partial`` from ``url``, resuming with an HTTP Range request where it holds bytes.

    On a network error the bytes received so far stay in ``partial`` for the next attempt.
    """
    kept = partial.stat().st_size if partial.is_file() else 0
    received = 0
    try:
        response, offset = _open_from(url, kept, timeout)
        if kept:
            log(f"{url}: {f'resumed after {kept} bytes' if offset else f'cannot resume, {kept} bytes dropped'}")
        with response, open(partial, "ab" if offset else "wb") as out:
            # read1 hands over what has arrived, so an interrupted download keeps what it received.
            while chunk := response.read1(CHUNK_SIZE):
                out.write(chunk)
                received += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        # ValueError: urlopen's answer to a malformed or unsupported URL.
        raise _failure(url, partial, _network_reason(error)) from error
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and received < int(announced):  # read1 meets a dropped connection as EOF
        raise _failure(url, partial, f"the connection closed after {received} of {announced} bytes")


def download(url: str, sha256: str, dest: str | Path, timeout: float = 60, log=lambda message: None) -> Path:
    """Download ``url`` (http, https or file://) to ``dest`` and verify its sha256.

    An existing ``dest`` with the right checksum is kept as is (no network access). The bytes
    arrive in ``.<name>.part`` next to ``dest`` (see partial_path); an interrupted download leaves
    them there and the next call resumes with a Range request where the server supports it. The
    sha256 is checked over the whole file; on a mismatch neither ``dest`` nor the partial file is left.
    """
    expected = _normalised_sha256(url, sha256)
    dest = Path(dest)
    if dest.is_file() and sha256_of(dest) == expected:
        return dest
    # A stale file at dest must not survive a failed attempt and pass for the real one.
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    partial = partial_path(dest)
    with atomic_path(dest) as tmp:  # also clears the temporaries of killed attempts
        _fetch(url, partial, timeout, log)
        actual = sha256_of(partial)
        if actual != expected:
            partial.unlink()
            raise ChecksumError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}")
        os.replace(partial, tmp)
    return dest
