import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from transfergrid.archives import safe_extract
from transfergrid.downloads import download, sha256_of
from transfergrid.errors import ChecksumError, DataError, UnsafeArchiveError

PAYLOAD = b"transfergrid test payload\n" * 1000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path, http_server):
    """A directory with one file, served over HTTP: (base_url, file_name)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    return http_server(root), "data.bin"


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------- download


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert sha256_of(path) == _sha(PAYLOAD)


def test_download_over_http_verifies_checksum(tmp_path, served):
    base_url, name = served
    dest = tmp_path / "out" / "data.bin"
    assert download(f"{base_url}/{name}", _sha(PAYLOAD), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["data.bin"]


def test_download_accepts_uppercase_digest_and_file_url(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "dest.bin"
    download(source.as_uri(), _sha(PAYLOAD).upper(), dest)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(tmp_path, served):
    base_url, name = served
    out = tmp_path / "out"
    out.mkdir()
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(f"{base_url}/{name}", wrong, out / "data.bin")
    message = str(info.value)
    assert "\n" not in message and wrong in message and _sha(PAYLOAD) in message and name in message
    assert _leftovers(out) == []


def test_stale_file_at_dest_is_removed_when_download_fails(tmp_path, served):
    base_url, name = served
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old")
    with pytest.raises(ChecksumError):
        download(f"{base_url}/{name}", "1" * 64, dest)
    assert _leftovers(tmp_path) == ["www"]


@pytest.mark.parametrize("bad", [None, "", "abc", "g" * 64, "0" * 63])
def test_missing_or_malformed_sha256_is_refused_before_download(tmp_path, bad):
    with pytest.raises(DataError, match="sha256"):
        download("http://127.0.0.1:9/never-contacted", bad, tmp_path / "x")
    assert _leftovers(tmp_path) == []


def test_http_404_is_a_one_line_data_error(tmp_path, served):
    base_url, _ = served
    url = f"{base_url}/missing.bin"
    with pytest.raises(DataError) as info:
        download(url, _sha(PAYLOAD), tmp_path / "out" / "x")
    assert url in str(info.value) and "404" in str(info.value) and "\n" not in str(info.value)
    assert _leftovers(tmp_path / "out") == []


def test_unreachable_host_is_a_data_error(tmp_path, http_server):
    base_url = http_server(tmp_path)  # start and note a port, then point at a closed one
    with pytest.raises(DataError, match="failed"):
        download("http://127.0.0.1:1/x", _sha(PAYLOAD), tmp_path / "x", timeout=5)
    assert base_url  # the fixture itself works


# --------------------------------------------------------------------------- safe_extract


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _zip_symlink(path: Path, name: str, target: str) -> Path:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, target)
    return path


def _tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    return info, io.BytesIO(data) if data else None


def _tar(path: Path, members: list, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, fileobj in members:
            tar.addfile(info, fileobj)
    return path


UNSAFE_ARCHIVES = {
    "zip-dotdot": lambda d: _zip(d / "a.zip", {"ok.txt": b"ok", "../evil.txt": b"evil"}),
    "zip-absolute": lambda d: _zip(d / "a.zip", {"/tmp/evil": b"evil"}),
    "zip-symlink": lambda d: _zip_symlink(d / "a.zip", "link", "/etc/passwd"),
    "tar-dotdot": lambda d: _tar(d / "a.tar", [_tar_member("ok.txt", b"ok"), _tar_member("../x", b"evil")]),
    "tar-absolute": lambda d: _tar(d / "a.tar", [_tar_member("/tmp/evil", b"evil")]),
    "tar-symlink-out": lambda d: _tar(d / "a.tar", [_tar_member("link", kind=tarfile.SYMTYPE, linkname="../../etc")]),
    "tar-symlink-abs": lambda d: _tar(
        d / "a.tgz", [_tar_member("link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")], "w:gz"
    ),
    "tar-hardlink-out": lambda d: _tar(d / "a.tar", [_tar_member("h", kind=tarfile.LNKTYPE, linkname="../outside")]),
    "tar-symlink-chain": lambda d: _tar(
        d / "a.tar",
        [
            _tar_member("b", kind=tarfile.SYMTYPE, linkname="."),
            _tar_member("a", kind=tarfile.SYMTYPE, linkname="b/.."),
        ],
    ),
    "tar-through-symlink": lambda d: _tar(
        d / "a.tar", [_tar_member("d", kind=tarfile.SYMTYPE, linkname="sub"), _tar_member("d/x", b"x")]
    ),
    "tar-fifo": lambda d: _tar(d / "a.tar", [_tar_member("pipe", kind=tarfile.FIFOTYPE)]),
    "tar-device": lambda d: _tar(d / "a.tar", [_tar_member("dev", kind=tarfile.CHRTYPE)]),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_ARCHIVES))
def test_unsafe_archive_is_rejected_and_leaves_nothing(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    archive = UNSAFE_ARCHIVES[case](work)
    target = work / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, target)
    message = str(info.value)
    assert "\n" not in message and str(archive) in message and "member" in message
    assert _leftovers(work) == [archive.name]  # no target, no temp dir
    assert _leftovers(tmp_path) == ["work"]  # nothing escaped either


def test_good_zip_extracts(tmp_path):
    archive = _zip(tmp_path / "good.zip", {"top/a/1.txt": b"one", "top/b/2.txt": b"two"})
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "top/a/1.txt").read_bytes() == b"one"
    assert (target / "top/b/2.txt").read_bytes() == b"two"


def test_good_tar_gz_extracts_with_inner_symlink(tmp_path):
    archive = _tar(
        tmp_path / "good.tar.gz",
        [
            _tar_member("top/", kind=tarfile.DIRTYPE),
            _tar_member("top/a/1.txt", b"one"),
            _tar_member("top/link.txt", kind=tarfile.SYMTYPE, linkname="a/1.txt"),
        ],
        "w:gz",
    )
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "top/a/1.txt").read_bytes() == b"one"
    assert (target / "top/link.txt").is_symlink() and (target / "top/link.txt").read_bytes() == b"one"


def test_extract_replaces_an_existing_target(tmp_path):
    target = tmp_path / "out"
    (target / "stale").mkdir(parents=True)
    safe_extract(_zip(tmp_path / "g.zip", {"new.txt": b"n"}), target)
    assert _leftovers(target) == ["new.txt"]


def test_unknown_archive_format_is_a_data_error(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"definitely not an archive" * 100)
    with pytest.raises(DataError, match=r"junk\.zip"):
        safe_extract(junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()
