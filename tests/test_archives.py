"""Archive bombs and hostile archives: refused with one line, before anything is written, leaving nothing.

Every archive is built here with tarfile/zipfile; hostile details (flag bits, compression
methods, lying sizes) are patched into the real bytes.
"""

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from transfergrid.archives import LIMIT_FIELDS, RATIO_EXEMPT_BYTES, ExtractionLimits, safe_extract
from transfergrid.errors import ConfigError, DataError, UnsafeArchiveError
from transfergrid.sources import build_dataset, extraction_limits

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
ZEROS = 4 << 20  # 4 MiB of zeros: any compressor packs them at a ratio far above 200
KEY = "datasets.<name>"


class Zeros(io.RawIOBase):
    """``size`` zero bytes as a stream, so a bomb is built without holding it in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def tar_of(path: Path, members: dict[str, int], mode: str = "w") -> Path:
    """A tar whose members are files of zeros, name -> size."""
    with tarfile.open(path, mode) as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


def zip_of(path: Path, members: dict[str, int], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, size in members.items():
            with zf.open(name, "w") as out:
                out.write(bytes(size))
    return path


def header_only_tar(path: Path, name: str, size: int) -> Path:
    """One tar header that declares ``size`` bytes and no data at all: only the header can stop it."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT))
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def expected_line(archive: Path, what: str, key: str, limit, config_key: str = KEY) -> str:
    return (
        f"archive {archive} refused as a possible archive bomb: {what}, over the limit {config_key}.{key} = {limit} "
        "(raise it if the archive is genuine)"
    )


def ratio_what(archive: Path, sizes: list[int]) -> str:
    """What the ratio refusal says: the running total of member sizes when it first passes the limit."""
    size = archive.stat().st_size
    total = 0
    for member_size in sizes:
        total += member_size
        if total > RATIO_EXEMPT_BYTES and total > 200 * size:
            break
    return f"its headers declare at least {total} bytes from a {size}-byte archive (ratio {total / size:.0f})"


# name -> (build(dir) -> archive, limits, expected(archive) -> the exact error line)
BOMBS = {
    "zip-deflate-ratio": (
        lambda d: zip_of(d / "a.zip", {"zeros.bin": ZEROS}),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "zip-bzip2-ratio": (
        lambda d: zip_of(d / "a.zip", {"zeros.bin": ZEROS}, zipfile.ZIP_BZIP2),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "zip-lzma-ratio": (
        lambda d: zip_of(d / "a.zip", {"zeros.bin": ZEROS}, zipfile.ZIP_LZMA),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "zip-many-small-ratio": (  # each member below the exemption, the sum far above it
        lambda d: zip_of(d / "a.zip", {f"z{i}.bin": 512 << 10 for i in range(8)}),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [512 << 10] * 8), "max_compression_ratio", 200),
    ),
    "tar-gz-ratio": (
        lambda d: tar_of(d / "a.tar.gz", {"zeros.bin": ZEROS}, "w:gz"),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "tar-bz2-ratio": (
        lambda d: tar_of(d / "a.tar.bz2", {"zeros.bin": ZEROS}, "w:bz2"),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "tar-xz-ratio": (
        lambda d: tar_of(d / "a.tar.xz", {"zeros.bin": ZEROS}, "w:xz"),
        ExtractionLimits(),
        lambda a: expected_line(a, ratio_what(a, [ZEROS]), "max_compression_ratio", 200),
    ),
    "tar-header-declares-1TiB": (  # default max_bytes; no data follows, so only the header can stop it
        lambda d: header_only_tar(d / "a.tar", "huge.bin", 1 << 40),
        ExtractionLimits(),
        lambda a: expected_line(a, f"its headers declare at least {1 << 40} bytes", "max_extract_bytes", 20 << 30),
    ),
    "zip-total-bytes": (
        lambda d: zip_of(d / "a.zip", {"a.bin": 600, "b.bin": 600}, zipfile.ZIP_STORED),
        ExtractionLimits(max_bytes=1000, config_key="datasets.web"),
        lambda a: expected_line(
            a, "its headers declare at least 1200 bytes", "max_extract_bytes", 1000, "datasets.web"
        ),
    ),
    "tar-total-bytes": (
        lambda d: tar_of(d / "a.tar", {"a.bin": 600, "b.bin": 600}),
        ExtractionLimits(max_bytes=1000, config_key="datasets.web"),
        lambda a: expected_line(
            a, "its headers declare at least 1200 bytes", "max_extract_bytes", 1000, "datasets.web"
        ),
    ),
    "zip-members": (
        lambda d: zip_of(d / "a.zip", {f"{i}.txt": 0 for i in range(11)}),
        ExtractionLimits(max_members=10),
        lambda a: expected_line(a, "it has at least 11 members", "max_extract_members", 10),
    ),
    "tar-gz-members": (
        lambda d: tar_of(d / "a.tar.gz", {f"{i}.txt": 0 for i in range(11)}, "w:gz"),
        ExtractionLimits(max_members=10),
        lambda a: expected_line(a, "it has at least 11 members", "max_extract_members", 10),
    ),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_archive_bomb_is_refused_with_one_line_and_leaves_nothing(tmp_path, case):
    build, limits, expected = BOMBS[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    with pytest.raises(DataError) as info:
        safe_extract(archive, work / "target", limits)
    assert str(info.value) == expected(archive)
    assert leftovers(work) == [archive.name]  # no target, no temporary directory


def test_archives_just_within_the_limits_extract(tmp_path):
    """The limits are bounds, not off by one: exactly max_bytes and max_members pass."""
    archive = zip_of(tmp_path / "a.zip", {"a.bin": 500, "b.bin": 500}, zipfile.ZIP_STORED)
    target = safe_extract(archive, tmp_path / "out", ExtractionLimits(max_bytes=1000, max_members=2))
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]
    # Highly compressible but small: below RATIO_EXEMPT_BYTES the ratio is not held against it.
    small = tar_of(tmp_path / "small.tar.gz", {"zeros.bin": RATIO_EXEMPT_BYTES}, "w:gz")
    assert RATIO_EXEMPT_BYTES / small.stat().st_size > 200
    assert (safe_extract(small, tmp_path / "small") / "zeros.bin").stat().st_size == RATIO_EXEMPT_BYTES


def test_ratio_limit_can_be_raised(tmp_path):
    archive = tar_of(tmp_path / "a.tar.gz", {"zeros.bin": ZEROS}, "w:gz")
    target = safe_extract(archive, tmp_path / "out", ExtractionLimits(max_ratio=100_000))
    assert (target / "zeros.bin").stat().st_size == ZEROS


def _lying_zip(path: Path, real_size: int, declared_size: int) -> Path:
    """A deflated member of ``real_size`` zeros whose central directory declares ``declared_size``."""
    zip_of(path, {"zeros.bin": real_size})
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    assert struct.unpack_from("<I", data, central + 24)[0] == real_size
    struct.pack_into("<I", data, central + 24, declared_size)  # uncompressed size
    struct.pack_into("<I", data, 22, declared_size)  # the local header's copy, for good measure
    path.write_bytes(bytes(data))
    return path


def test_lying_zip_header_does_not_get_past_the_limit(tmp_path):
    """The header says 100 bytes, the data inflates to 4 MiB, the limit is 1 MiB: refused, nothing left.

    (zipfile itself stops at the declared size and then fails the CRC; the byte count made while
    writing would stop it at the limit otherwise.)"""
    work = tmp_path / "work"
    work.mkdir()
    archive = _lying_zip(work / "liar.zip", ZEROS, 100)
    with zipfile.ZipFile(archive) as zf:
        assert zf.infolist()[0].file_size == 100  # the lie is what zipfile believes
    with pytest.raises(DataError) as info:
        safe_extract(archive, work / "target", ExtractionLimits(max_bytes=1 << 20))
    assert str(archive) in str(info.value) and "\n" not in str(info.value)
    assert leftovers(work) == ["liar.zip"]


# --------------------------------------------------------------------------- hostile archives


def _pax_tar(path: Path, name: str, pax_headers: dict, kind=tarfile.REGTYPE, data: bytes = b"ok") -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.pax_headers = pax_headers
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def _patched_zip(path: Path, flag_bits: int = 0, method: int | None = None) -> Path:
    """A one-member deflated zip with general-purpose flag bits or the method patched into both headers."""
    zip_of(path, {"a.txt": 500})
    data = bytearray(path.read_bytes())
    for header, flags_at in ((0, 6), (data.rfind(b"PK\x01\x02"), 8)):
        struct.pack_into(
            "<H", data, header + flags_at, struct.unpack_from("<H", data, header + flags_at)[0] | flag_bits
        )
        if method is not None:
            struct.pack_into("<H", data, header + flags_at + 2, method)
    path.write_bytes(bytes(data))
    return path


def _renamed_in_bytes(path: Path, old: bytes, new: bytes) -> Path:
    path.write_bytes(path.read_bytes().replace(old, new))
    return path


def _cannot_read(archive, how):
    return f"cannot extract archive {archive}: member 'a.txt' {how}"


ENCRYPTED = "is encrypted (decrypt the archive and pack it again without a password)"

# name -> (build(dir) -> archive, error class, expected(archive) -> the exact error line)
HOSTILE = {
    "tar-pax-nul-in-name": (
        lambda d: _pax_tar(d / "a.tar", "ok.txt", {"path": "a\x00b.txt"}),
        UnsafeArchiveError,
        lambda a: f"unsafe archive {a}: member 'a\\x00b.txt': NUL byte in name",
    ),
    "tar-pax-nul-in-link": (
        lambda d: _pax_tar(d / "a.tar", "link", {"linkpath": "x\x00y"}, kind=tarfile.SYMTYPE),
        UnsafeArchiveError,
        lambda a: f"unsafe archive {a}: member 'link': NUL byte in link target",
    ),
    "tar-pax-sparse": (
        lambda d: _pax_tar(
            d / "a.tar",
            "holes.bin",
            {"GNU.sparse.size": "100000", "GNU.sparse.map": "0,2", "GNU.sparse.name": "holes.bin"},
        ),
        UnsafeArchiveError,
        lambda a: f"unsafe archive {a}: member 'holes.bin': sparse member",
    ),
    "zip-nul-in-name": (  # zipfile would cut the name at the NUL and extract 'a' quietly
        lambda d: _renamed_in_bytes(zip_of(d / "a.zip", {"aXb.txt": 10}), b"aXb.txt", b"a\x00b.txt"),
        UnsafeArchiveError,
        lambda a: f"unsafe archive {a}: member 'a\\x00b.txt': NUL byte in name",
    ),
    "zip-encrypted": (
        lambda d: _patched_zip(d / "a.zip", flag_bits=0x1),
        DataError,
        lambda a: _cannot_read(a, ENCRYPTED),
    ),
    "zip-strong-encryption": (
        lambda d: _patched_zip(d / "a.zip", flag_bits=0x40),
        DataError,
        lambda a: _cannot_read(a, ENCRYPTED),
    ),
    "zip-deflate64": (
        lambda d: _patched_zip(d / "a.zip", method=9),
        DataError,
        lambda a: _cannot_read(a, "uses compression method 9 (deflate64), which Python's zipfile cannot read"),
    ),
    "zip-ppmd": (
        lambda d: _patched_zip(d / "a.zip", method=98),
        DataError,
        lambda a: _cannot_read(a, "uses compression method 98 (ppmd), which Python's zipfile cannot read"),
    ),
    "zip-unknown-method": (
        lambda d: _patched_zip(d / "a.zip", method=99),
        DataError,
        lambda a: _cannot_read(a, "uses compression method 99 (unknown), which Python's zipfile cannot read"),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_one_line_and_leaves_nothing(tmp_path, case):
    build, error_class, expected = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    with pytest.raises(error_class) as info:
        safe_extract(archive, work / "target")
    assert str(info.value) == expected(archive)
    assert leftovers(work) == [archive.name]


# --------------------------------------------------------------------------- the limits in the config


def test_schema_defaults_are_the_extraction_defaults():
    dataset_keys = yaml.safe_load(SCHEMA.read_text())["properties"]["datasets"]["additionalProperties"]["properties"]
    defaults = ExtractionLimits()
    assert {key: dataset_keys[key]["default"] for key in LIMIT_FIELDS} == {
        key: getattr(defaults, field) for key, field in LIMIT_FIELDS.items()
    }
    assert defaults.max_bytes == 20 * 1024**3 and defaults.max_members == 1_000_000 and defaults.max_ratio == 200


def test_extraction_limits_come_from_the_dataset_spec():
    spec = {"source": "url", "max_extract_bytes": 5000, "max_extract_members": 7, "max_compression_ratio": 50.5}
    assert extraction_limits("web", spec) == ExtractionLimits(5000, 7, 50.5, "datasets.web")
    assert extraction_limits("web", {"source": "url"}) == ExtractionLimits(config_key="datasets.web")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("max_extract_bytes", 0, "datasets.web.max_extract_bytes must be an integer of at least 1, got 0"),
        ("max_extract_bytes", 1.5, "datasets.web.max_extract_bytes must be an integer of at least 1, got 1.5"),
        ("max_extract_members", True, "datasets.web.max_extract_members must be an integer of at least 1, got True"),
        ("max_compression_ratio", 0.5, "datasets.web.max_compression_ratio must be a number of at least 1, got 0.5"),
        ("max_compression_ratio", "9", "datasets.web.max_compression_ratio must be a number of at least 1, got '9'"),
    ],
)
def test_bad_limit_names_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        extraction_limits("web", {"source": "url", key: value})
    assert str(info.value) == expected


def test_url_source_refuses_a_bomb_naming_the_dataset_key(tmp_path):
    """The limits reach safe_extract from the dataset's spec, as the obtain_dataset rule passes it."""
    archive = zip_of(tmp_path / "flowers.zip", {"flowers/rose/1.png": 3000, "flowers/tulip/1.png": 3000})
    spec = {"source": "url", "url": "http://unused.invalid/flowers.zip", "sha256": "0" * 64, "max_extract_bytes": 5000}
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        build_dataset("flowers", spec, out, archive=archive, log=lambda line: None)
    assert str(info.value) == expected_line(
        archive, "its headers declare at least 6000 bytes", "max_extract_bytes", 5000, "datasets.flowers"
    )
    assert not (out / "images").exists() and not (out / "manifest.csv").exists()
