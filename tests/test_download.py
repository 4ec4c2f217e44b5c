"""The MovieLens downloader against a loopback HTTP server serving a small fixture archive."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kp4sr import download as dl
from kp4sr.errors import ConfigError, DataError, KP4SRError


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        thread.join(timeout=5)


ARCHIVE = make_zip({"ml-100k/u.data": b"1\t1\t5\t100\n", "ml-100k/README": b"terms\n"})


def serve(server: Server, monkeypatch, body: bytes, md5: str | None) -> None:
    server.files["ml-100k.zip"] = body
    monkeypatch.setitem(dl.DATASETS, "ml-100k", dl.Archive("ml-100k.zip", md5))


def test_download_extract_and_reuse(server: Server, monkeypatch, tmp_path: Path, capsys) -> None:
    serve(server, monkeypatch, ARCHIVE, hashlib.md5(ARCHIVE).hexdigest())
    folder = dl.download("ml-100k", tmp_path, base_url=server.url)
    assert folder == tmp_path / "ml-100k"
    assert (folder / "u.data").read_bytes() == b"1\t1\t5\t100\n"
    assert server.requests == ["/ml-100k.zip"]
    assert "do not redistribute" in capsys.readouterr().err
    assert dl.download("ml-100k", tmp_path, base_url=server.url, progress=False) == folder
    assert len(server.requests) == 1  # the second call is served from the cache
    assert not list(tmp_path.glob("*.part"))


def test_checksum_mismatch_leaves_no_file(server: Server, monkeypatch, tmp_path: Path) -> None:
    serve(server, monkeypatch, ARCHIVE, "0" * 32)
    with pytest.raises(DataError, match="MD5 checksum mismatch"):
        dl.download("ml-100k", tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_checksum_is_said(server: Server, monkeypatch, tmp_path: Path, capsys) -> None:
    serve(server, monkeypatch, ARCHIVE, None)
    dl.download("ml-100k", tmp_path, base_url=server.url, progress=False)
    assert "checksum is unknown" in capsys.readouterr().err


@pytest.mark.parametrize("evil", ["../evil", "ml-100k/../../evil", "/abs/evil"])
def test_unsafe_member_is_rejected(server: Server, monkeypatch, tmp_path: Path, evil: str) -> None:
    body = make_zip({"ml-100k/u.data": b"x", evil: b"boom"})
    serve(server, monkeypatch, body, hashlib.md5(body).hexdigest())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="unsafe archive member"):
        dl.download("ml-100k", cache, base_url=server.url, progress=False)
    assert not (tmp_path / "evil").exists() and list(cache.iterdir()) == []


def test_network_errors_are_one_line(server: Server, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(dl.DATASETS, "ml-100k", dl.Archive("ml-100k.zip", None))
    with pytest.raises(KP4SRError, match=r"cannot download .*ml-100k.zip: Not Found"):
        dl.download("ml-100k", tmp_path, base_url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="unknown dataset"):
        dl.download("ml-5k", tmp_path)


def test_table_and_cache_dir(monkeypatch, tmp_path: Path) -> None:
    assert set(dl.DATASETS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-latest-small"}
    assert dl.DATASETS["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert "Harper and Joseph A. Konstan" in dl.terms("ml-1m")
    monkeypatch.setenv("KP4SR_CACHE", str(tmp_path))
    assert dl.default_cache_dir() == tmp_path
    monkeypatch.delenv("KP4SR_CACHE")
    assert dl.default_cache_dir() == Path.home() / ".cache" / "kp4sr"


def test_cli_data_download(server: Server, monkeypatch, tmp_path: Path, capsys) -> None:
    from kp4sr.cli import main

    serve(server, monkeypatch, ARCHIVE, hashlib.md5(ARCHIVE).hexdigest())
    args = ["data", "download", "ml-100k", "--cache-dir", str(tmp_path), "--base-url", server.url]
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "ml-100k")
    assert "GroupLens" in out.err  # the terms are printed with the download
    serve(server, monkeypatch, ARCHIVE, "0" * 32)  # a checksum that cannot match
    assert (
        main([*args[:2], "ml-100k", "--cache-dir", str(tmp_path / "b"), "--base-url", server.url])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kp4sr: error:") and "checksum" in err[-1].lower()
