import hashlib
import http.server
import io
import re
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from transfergrid.archives import safe_extract
from transfergrid.downloads import download, partial_path, sha256_of
from transfergrid.errors import ChecksumError, DataError, UnsafeArchiveError

PAYLOAD = b"transfergrid test payload\n" * 1000
WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"


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


# --------------------------------------------------------------------------- resuming


class OneFileServer:
    """Serves one payload on 127.0.0.1 and records every request: its Range header, the status
    answered and the body bytes sent. ``ranges=False`` ignores Range like many servers do;
    ``delay`` slows each 4 KiB piece down; ``cut_after`` ends the first response early."""

    PIECE = 4096

    def __init__(self, payload: bytes, ranges: bool = True, delay: float = 0.0, cut_after: int | None = None):
        self.payload, self.ranges, self.delay, self.cut_after = payload, ranges, delay, cut_after
        self.requests: list[dict] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data.bin"

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):
                pass

            def do_GET(self):
                owner.answer(self)

        return Handler

    def answer(self, handler) -> None:
        wanted = handler.headers.get("Range")
        record = {"range": wanted, "status": 200, "sent": 0}
        self.requests.append(record)
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        start = int(match.group(1)) if self.ranges and match else 0
        if start >= len(self.payload) > 0:
            record["status"] = 416
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(self.payload)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = self.payload[start:]
        record["status"] = 206 if start else 200
        handler.send_response(record["status"])
        handler.send_header("Content-Length", str(len(body)))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        handler.end_headers()
        if self.cut_after is not None and len(self.requests) == 1:
            body = body[: self.cut_after]
        try:
            for offset in range(0, len(body), self.PIECE):
                piece = body[offset : offset + self.PIECE]
                record["sent"] += len(piece)  # counted first: the client may finish before this thread resumes
                handler.wfile.write(piece)
                time.sleep(self.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def one_file_server():
    servers = []

    def start(payload: bytes, **options) -> OneFileServer:
        servers.append(OneFileServer(payload, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


BIG = bytes(range(256)) * 1024  # 256 KiB that are not all alike, so a misplaced byte shows


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def test_partial_file_name_is_documented(tmp_path):
    assert partial_path(tmp_path / "flowers.archive") == tmp_path / ".flowers.archive.part"


def test_interrupted_download_keeps_its_bytes_and_resumes_with_range(tmp_path, one_file_server):
    server = one_file_server(BIG, cut_after=100_000)
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError) as info:
        download(server.url, _sha(BIG), dest)
    kept = _partial(dest).stat().st_size
    assert str(info.value) == (
        f"download of {server.url} failed: the connection closed after {kept} of {len(BIG)} bytes "
        f"({kept} bytes kept in {_partial(dest)} for the next attempt)"
    )
    assert 0 < kept <= 100_000 and _leftovers(tmp_path) == [".data.bin.part"]
    logged = []
    download(server.url, _sha(BIG), dest, log=logged.append)
    assert dest.read_bytes() == BIG and _leftovers(tmp_path) == ["data.bin"]
    assert server.requests[1] == {"range": f"bytes={kept}-", "status": 206, "sent": len(BIG) - kept}
    assert logged == [f"{server.url}: resumed after {kept} bytes"]


def test_server_without_range_support_gets_a_full_download(tmp_path, one_file_server):
    server = one_file_server(BIG, ranges=False)
    dest = tmp_path / "data.bin"
    _partial(dest).write_bytes(BIG[:50_000])  # what an interrupted attempt left
    logged = []
    download(server.url, _sha(BIG), dest, log=logged.append)
    assert dest.read_bytes() == BIG and _leftovers(tmp_path) == ["data.bin"]
    assert server.requests == [{"range": "bytes=50000-", "status": 200, "sent": len(BIG)}]
    assert logged == [f"{server.url}: cannot resume, 50000 bytes dropped"]


def test_range_not_satisfiable_restarts_from_zero(tmp_path, one_file_server):
    server = one_file_server(BIG)
    dest = tmp_path / "data.bin"
    _partial(dest).write_bytes(bytes(len(BIG) + 10))  # longer than the file: left by another version of it
    download(server.url, _sha(BIG), dest)
    assert dest.read_bytes() == BIG and _leftovers(tmp_path) == ["data.bin"]
    assert [(r["range"], r["status"]) for r in server.requests] == [(f"bytes={len(BIG) + 10}-", 416), (None, 200)]


def test_partial_that_is_no_prefix_fails_the_checksum_and_is_dropped(tmp_path, one_file_server):
    server = one_file_server(BIG)
    dest = tmp_path / "data.bin"
    _partial(dest).write_bytes(b"\xff" * 1000)  # resumable, but not the start of this file
    with pytest.raises(ChecksumError) as info:
        download(server.url, _sha(BIG), dest)
    assert "\n" not in str(info.value) and _sha(BIG) in str(info.value)
    assert _leftovers(tmp_path) == []  # no file and no partial
    download(server.url, _sha(BIG), dest)  # so the next attempt starts afresh and succeeds
    assert dest.read_bytes() == BIG and server.requests[-1]["range"] is None


def test_file_url_with_a_partial_is_read_in_full(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(BIG)
    dest = tmp_path / "out" / "data.bin"
    dest.parent.mkdir()
    _partial(dest).write_bytes(BIG[:1000])
    download(source.as_uri(), _sha(BIG), dest)
    assert dest.read_bytes() == BIG and _leftovers(dest.parent) == ["data.bin"]


_DOWNLOAD_IN_A_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from transfergrid.downloads import download
download(sys.argv[2], sys.argv[3], sys.argv[4])
"""


def _wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_download_killed_with_sigkill_resumes_and_leaves_no_temporary(tmp_path, one_file_server):
    server = one_file_server(BIG, delay=0.02)  # about 1.3 s for the whole file
    dest = tmp_path / "downloads" / "data.bin"
    child = subprocess.Popen(
        [sys.executable, "-c", _DOWNLOAD_IN_A_CHILD, str(WORKFLOW), server.url, _sha(BIG), str(dest)]
    )
    try:
        _wait_for(lambda: _partial(dest).is_file() and _partial(dest).stat().st_size >= 32 << 10, "the first bytes")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    kept = _partial(dest).stat().st_size
    assert child.returncode == -signal.SIGKILL and kept < len(BIG)
    assert _leftovers(dest.parent) == [".data.bin.part"]  # no .data.bin.tmp-<pid> left behind
    server.delay = 0
    download(server.url, _sha(BIG), dest)
    assert dest.read_bytes() == BIG and _leftovers(dest.parent) == ["data.bin"]
    assert len(server.requests) == 2 and server.requests[1]["range"] == f"bytes={kept}-"
    assert server.requests[1]["sent"] == len(BIG) - kept  # only the missing bytes were served again


_WRITER_KILLED_INSIDE_ATOMIC_PATH = """
import sys, time
sys.path.insert(0, sys.argv[1])
from transfergrid.io import atomic_path
with atomic_path(sys.argv[2]) as tmp:
    tmp.write_bytes(b"half a download")
    print("ready", flush=True)
    time.sleep(60)
"""


def test_next_download_removes_the_temporary_of_a_killed_attempt(tmp_path, one_file_server):
    """What the issue saw: a SIGKILLed download left results/downloads/.<name>.archive.tmp-<pid> forever."""
    dest = tmp_path / "downloads" / "flowers.archive"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER_KILLED_INSIDE_ATOMIC_PATH, str(WORKFLOW), str(dest)], stdout=subprocess.PIPE
    )
    assert child.stdout.readline() == b"ready\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert _leftovers(dest.parent) == [f".flowers.archive.tmp-{child.pid}"]
    server = one_file_server(BIG)
    download(server.url, _sha(BIG), dest)
    assert _leftovers(dest.parent) == ["flowers.archive"]


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
