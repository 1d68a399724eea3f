"""Checksummed downloads and archive extraction that cannot write outside its target.

Both functions write through ``io.atomic_path``: a failed download or a rejected archive
leaves nothing at the destination, so Snakemake never mistakes a partial file for output.
"""

from __future__ import annotations

import hashlib
import http.client
import posixpath
import re
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import ChecksumError, DataError, UnsafeArchiveError, one_line
from .io import atomic_path

CHUNK_SIZE = 1 << 20  # 1 MiB
_SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
_USER_AGENT = "transfergrid (urllib)"
# PEP 706 extraction filters (Python >= 3.10.12); an empty tuple matches no exception.
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())


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


# --------------------------------------------------------------------------- extraction


def _escapes(relative_posix_path: str) -> bool:
    """True when a relative path, resolved lexically inside the target, lands outside it."""
    normal = posixpath.normpath(relative_posix_path)
    return normal == ".." or normal.startswith("../")


def _is_absolute(name: str) -> bool:
    # Windows-style names ("C:\\x", "\\x") are treated as absolute too: some zip tools write them.
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name))


def _member_path_problem(name: str) -> str | None:
    if _is_absolute(name):
        return "absolute path"
    if _escapes(name.replace("\\", "/")):
        return "path escapes the target directory"
    return None


def _passes_through(path: str, symlink_names: set[str]) -> bool:
    """True when resolving ``path`` would step through a symlink member (e.g. ``link/..``, ``link/x``).

    Lexical resolution is only sound when no step crosses a symlink, so such paths are refused.
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    stack: list[str] = []
    for index, part in enumerate(parts):
        if part == "..":
            if stack:
                stack.pop()
            continue
        stack.append(part)
        if index < len(parts) - 1 and "/".join(stack) in symlink_names:
            return True
    return False


def _tar_member_problem(member: tarfile.TarInfo, symlink_names: set[str]) -> str | None:
    problem = _member_path_problem(member.name)
    if problem:
        return problem
    if _passes_through(member.name, symlink_names):
        return "path goes through a symlink member"
    if member.issym() or member.islnk():
        link = member.linkname
        if _is_absolute(link):
            return f"link to absolute path {link!r}"
        # A symlink target is relative to the link's own directory, a hard link's to the archive root.
        base = posixpath.dirname(member.name) if member.issym() else ""
        resolved = posixpath.join(base, link)
        if _escapes(resolved):
            return f"link target {link!r} escapes the target directory"
        if _passes_through(resolved, symlink_names):
            return f"link target {link!r} goes through a symlink member"
        return None
    if member.isdev():
        return "device or fifo member"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    return None


def _check_tar(archive: Path, tar: tarfile.TarFile) -> None:
    members = tar.getmembers()
    symlink_names = {posixpath.normpath(m.name) for m in members if m.issym()}
    for member in members:
        problem = _tar_member_problem(member, symlink_names)
        if problem:
            raise UnsafeArchiveError(f"unsafe archive {archive}: member {member.name!r}: {problem}")


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    problem = _member_path_problem(info.filename)
    if problem:
        return problem
    file_type = stat.S_IFMT(info.external_attr >> 16)  # unix file type; 0 when the zip did not record one
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        # zipfile would write a symlink/device as a plain file holding its target; refuse instead.
        return "symlink, device or other special member"
    return None


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        problem = _zip_member_problem(info)
        if problem:
            raise UnsafeArchiveError(f"unsafe archive {archive}: member {info.filename!r}: {problem}")


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        _check_tar(archive, tar)
        into.mkdir(parents=True)
        if hasattr(tarfile, "data_filter"):
            # Defence in depth: the stdlib filter re-checks every member against the real filesystem.
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            tar.extractall(into)


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        _check_zip(archive, zf)
        into.mkdir(parents=True)
        zf.extractall(into)


def _archive_extractor(archive: Path):
    # tar first: a zip never passes tar's header checksum, but a tar that ends with a zip member
    # can carry a zip end-of-directory record near its end and fool is_zipfile.
    if tarfile.is_tarfile(archive):
        return _extract_tar
    if zipfile.is_zipfile(archive):
        return _extract_zip
    return None


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a zip or tar (any compression) into ``target`` after checking every member.

    Absolute paths, ``..`` escapes, links leaving the target and device/fifo members raise
    UnsafeArchiveError before anything is written; ``target`` appears only on success.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    extractor = _archive_extractor(archive)
    if extractor is None:
        raise DataError(f"archive {archive} is neither a zip nor a tar file (checked by content)")
    try:
        with atomic_path(target) as tmp:
            extractor(archive, tmp)
    except _TAR_FILTER_ERROR as error:  # the stdlib filter caught what our checks did not
        member = getattr(error.tarinfo, "name", "?")
        raise UnsafeArchiveError(f"unsafe archive {archive}: member {member!r}: {one_line(error)}") from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DataError(f"cannot extract archive {archive}: {one_line(error)}") from error
    return target
