"""Archive extraction that stays inside its target and within its limits.

Every member is checked before anything is written: paths and links must stay inside the
target, and the sizes the headers declare must stay within the dataset's limits on total bytes,
member count and compression ratio; the bytes actually written are counted again while they
are written. A refused archive leaves nothing behind (``io.atomic_path``).
"""

from __future__ import annotations

import lzma
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, UnsafeArchiveError, one_line
from .io import atomic_path

CHUNK_SIZE = 1 << 20  # 1 MiB
# PEP 706 extraction filters (Python >= 3.10.12); an empty tuple matches no exception.
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())
# Archives that expand to less than this are never refused for their compression ratio.
RATIO_EXEMPT_BYTES = 1 << 20
_ZIP_ENCRYPTED = 0x41  # general-purpose flag bits 0 (encrypted) and 6 (strong encryption)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _escapes(relative_posix_path: str) -> bool:
    """True when a relative path, resolved lexically inside the target, lands outside it."""
    normal = posixpath.normpath(relative_posix_path)
    return normal == ".." or normal.startswith("../")


def _is_absolute(name: str) -> bool:
    # Windows-style names ("C:\\x", "\\x") are treated as absolute too: some zip tools write them.
    return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name))


def _member_path_problem(name: str) -> str | None:
    if "\x00" in name:  # a PAX header can carry one; the filesystem cannot
        return "NUL byte in name"
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
        if "\x00" in link:
            return "NUL byte in link target"
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
    if member.issparse():  # its real size is not what it occupies in the archive; images are never sparse
        return "sparse member"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    return None


@dataclass(frozen=True)
class ExtractionLimits:
    """What one archive may extract to. The defaults are those of the config schema's
    ``datasets.<name>.max_extract_bytes``, ``max_extract_members`` and ``max_compression_ratio``;
    ``config_key`` names the dataset entry in the error that tells the user which key to raise."""

    max_bytes: int = 20 * 1024**3
    max_members: int = 1_000_000
    max_ratio: float = 200
    config_key: str = "datasets.<name>"


# The config key of each limit (datasets.<name>.<key>) -> its ExtractionLimits field.
LIMIT_FIELDS = {
    "max_extract_bytes": "max_bytes",
    "max_extract_members": "max_members",
    "max_compression_ratio": "max_ratio",
}


class _ExtractionBudget:
    """Counts the bytes an archive's headers declare and, separately, the bytes extraction really
    writes, and refuses the archive as soon as either passes a limit.

    The compression ratio is total bytes over the archive's size on disk, which also catches zips
    whose entries overlap (each entry honest, the sum impossible). It applies only past
    RATIO_EXEMPT_BYTES, so that a small archive of a few flat images is not refused.
    """

    def __init__(self, archive: Path, limits: ExtractionLimits):
        self.archive, self.limits = archive, limits
        self.archive_size = max(1, archive.stat().st_size)
        self.members = self.declared = self.written = 0

    def declare(self, size: int) -> None:
        """One more member, of ``size`` bytes according to its header."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self._refusal(f"it has at least {self.members} members", "max_extract_members")
        self.declared += size
        self._check(self.declared, "its headers declare")

    def wrote(self, size: int) -> None:
        self.written += size
        self._check(self.written, "extracting it yields")

    def _check(self, total: int, what: str) -> None:
        if total > self.limits.max_bytes:
            raise self._refusal(f"{what} at least {total} bytes", "max_extract_bytes")
        if total > RATIO_EXEMPT_BYTES and total > self.limits.max_ratio * self.archive_size:
            ratio = total / self.archive_size
            raise self._refusal(
                f"{what} at least {total} bytes from a {self.archive_size}-byte archive (ratio {ratio:.0f})",
                "max_compression_ratio",
            )

    def _refusal(self, what: str, key: str) -> DataError:
        limit = getattr(self.limits, LIMIT_FIELDS[key])
        return DataError(
            f"archive {self.archive} refused as a possible archive bomb: {what}, over the limit "
            f"{self.limits.config_key}.{key} = {limit} (raise it if the archive is genuine)"
        )


class _CountingReader:
    """A file object that reports every byte read from it to the budget before handing it on."""

    def __init__(self, raw, budget: _ExtractionBudget):
        self._raw, self._budget = raw, budget

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._budget.wrote(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


def _check_tar(tar: tarfile.TarFile, budget: _ExtractionBudget) -> None:
    members = []
    for member in tar:  # headers one by one, so a bomb is refused before the rest is decompressed
        budget.declare(member.size if member.isreg() else 0)
        members.append(member)
    symlink_names = {posixpath.normpath(m.name) for m in members if m.issym()}
    for member in members:
        problem = _tar_member_problem(member, symlink_names)
        if problem:
            raise UnsafeArchiveError(f"unsafe archive {budget.archive}: member {member.name!r}: {problem}")


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    # orig_filename: zipfile cuts the name at a NUL byte, which would extract the member quietly renamed.
    problem = _member_path_problem(info.orig_filename)
    if problem:
        return problem
    file_type = stat.S_IFMT(info.external_attr >> 16)  # unix file type; 0 when the zip did not record one
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        # zipfile would write a symlink/device as a plain file holding its target; refuse instead.
        return "symlink, device or other special member"
    return None


def _zip_member_unreadable(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & _ZIP_ENCRYPTED:
        return "is encrypted (decrypt the archive and pack it again without a password)"
    if info.compress_type not in _ZIP_METHODS:
        method = zipfile.compressor_names.get(info.compress_type, "unknown")
        return f"uses compression method {info.compress_type} ({method}), which Python's zipfile cannot read"
    return None


def _check_zip(zf: zipfile.ZipFile, budget: _ExtractionBudget) -> None:
    for info in zf.infolist():
        budget.declare(info.file_size)
        problem = _zip_member_problem(info)
        if problem:
            raise UnsafeArchiveError(f"unsafe archive {budget.archive}: member {info.orig_filename!r}: {problem}")
        unreadable = _zip_member_unreadable(info)
        if unreadable:
            raise DataError(f"cannot extract archive {budget.archive}: member {info.filename!r} {unreadable}")


def _extract_tar(archive: Path, into: Path, budget: _ExtractionBudget) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        _check_tar(tar, budget)
        into.mkdir(parents=True)
        # Every member's data is read from tar.fileobj (the decompressed stream): counting there
        # counts the bytes that reach the disk, whatever the headers said.
        tar.fileobj = _CountingReader(tar.fileobj, budget)
        if hasattr(tarfile, "data_filter"):
            # Defence in depth: the stdlib filter re-checks every member against the real filesystem.
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            tar.extractall(into)


def _extract_zip(archive: Path, into: Path, budget: _ExtractionBudget) -> None:
    with zipfile.ZipFile(archive) as zf:
        _check_zip(zf, budget)
        into.mkdir(parents=True)
        for info in zf.infolist():
            # The names zipfile.extractall would use: empty, "." and ".." parts dropped.
            parts = [part for part in info.filename.split("/") if part not in ("", ".", "..")]
            if not parts:
                continue
            path = into.joinpath(*parts)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(path, "wb") as target:
                while chunk := source.read(CHUNK_SIZE):
                    budget.wrote(len(chunk))  # before writing: a lying header cannot fill the disk
                    target.write(chunk)


def _archive_extractor(archive: Path):
    # tar first: a zip never passes tar's header checksum, but a tar that ends with a zip member
    # can carry a zip end-of-directory record near its end and fool is_zipfile.
    if tarfile.is_tarfile(archive):
        return _extract_tar
    if zipfile.is_zipfile(archive):
        return _extract_zip
    return None


def safe_extract(archive: str | Path, target: str | Path, limits: ExtractionLimits = ExtractionLimits()) -> Path:
    """Extract a zip or tar (any compression) into ``target`` after checking every member.

    Absolute paths, ``..`` escapes, links leaving the target, device/fifo members and NUL bytes in
    names raise UnsafeArchiveError; encrypted or unreadably compressed zip members raise DataError;
    so does an archive over ``limits``, checked on the headers before anything is written and on
    the bytes as they are written. ``target`` appears only on success; a refusal leaves nothing.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    extractor = _archive_extractor(archive)
    if extractor is None:
        raise DataError(f"archive {archive} is neither a zip nor a tar file (checked by content)")
    try:
        with atomic_path(target) as tmp:
            extractor(archive, tmp, _ExtractionBudget(archive, limits))
    except _TAR_FILTER_ERROR as error:  # the stdlib filter caught what our checks did not
        member = getattr(error.tarinfo, "name", "?")
        raise UnsafeArchiveError(f"unsafe archive {archive}: member {member!r}: {one_line(error)}") from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise DataError(f"cannot extract archive {archive}: {one_line(error)}") from error
    return target
