"""Shared fixtures: a local HTTP server and tiny image trees built with PIL."""

import os

# No test may reach the network; hub-aware libraries must not even try.
os.environ["HF_HUB_OFFLINE"] = "1"

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass


def _serving():
    """``serve(directory) -> base_url``: serve a directory on 127.0.0.1 (free port)."""
    servers = []

    def serve(directory) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server():
    yield from _serving()


@pytest.fixture(scope="module")
def http_server_module():
    yield from _serving()


def write_image(path: Path, mode: str = "RGB", size=(8, 8), seed: int = 0) -> Path:
    """A small random image; the format follows the file extension."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


@pytest.fixture
def make_image_tree():
    """``make_image_tree(root, layout, mode="RGB", ext="png") -> [paths]``.

    ``layout`` is a nested dict whose leaves are image counts, e.g. ``{"cat": 3, "dog": 2}`` or
    ``{"train": {"cat": 2}, "val": {"cat": 1}}``.
    """

    def make(root, layout: dict, mode: str = "RGB", ext: str = "png") -> list[Path]:
        paths = []
        for name, content in layout.items():
            if isinstance(content, dict):
                paths += make(Path(root) / name, content, mode, ext)
            else:
                for i in range(content):
                    paths.append(write_image(Path(root) / name / f"img{i}.{ext}", mode, seed=i))
        return paths

    return make
