"""The download path: pooch against a local HTTP server serving a zip built in the test."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from helpers import data

RATINGS_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,3.5,200\n2,10,5.0,300\n"
MOVIES_CSV = "movieId,title,genres\n10,A (1990),Drama\n20,B (1991),Comedy|Drama\n"


def _build_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-latest-small/ratings.csv", RATINGS_CSV)
        archive.writestr("ml-latest-small/movies.csv", MOVIES_CSV)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yield (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _publish(www: Path, payload: bytes) -> None:
    (www / "ml.zip").write_bytes(payload)


def test_good_download_is_cached_and_loaded(server, tmp_path):
    url, www = server
    payload = _build_zip()
    _publish(www, payload)
    cache = tmp_path / "cache"

    folder = data.fetch_movielens(cache, url=f"{url}/ml.zip", sha256=_sha(payload))

    assert (cache / data.ZIP_NAME).read_bytes() == payload
    assert (folder / "ratings.csv").read_text() == RATINGS_CSV
    # A second call serves from the cache even with the server gone.
    (www / "ml.zip").unlink()
    assert data.fetch_movielens(cache, url=f"{url}/ml.zip", sha256=_sha(payload)) == folder


def test_loader_renames_columns(server, tmp_path):
    url, www = server
    payload = _build_zip()
    _publish(www, payload)
    data.fetch_movielens(tmp_path / "c", url=f"{url}/ml.zip", sha256=_sha(payload))

    ratings, movies = data.load_movielens(tmp_path / "c")

    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert list(movies.columns) == ["item_id", "title", "genres"]
    assert ratings["rating"].tolist() == [4.0, 3.5, 5.0]


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_bad_download_is_refused_and_leaves_nothing(server, tmp_path, damage):
    url, www = server
    payload = _build_zip()
    if damage == "tampered":
        served = payload.replace(b"4.0,100", b"1.0,100")
    else:
        served = payload[: len(payload) // 2]
    _publish(www, served)
    cache = tmp_path / "cache"

    with pytest.raises(data.ChecksumError, match="failed verification"):
        data.fetch_movielens(cache, url=f"{url}/ml.zip", sha256=_sha(payload))

    assert not any(path.is_file() for path in cache.rglob("*")), list(cache.rglob("*"))


def test_offline_with_empty_cache_says_where_to_put_the_zip(tmp_path):
    cache = tmp_path / "cache"
    # Port 9 on loopback: nothing listens, so the connection is refused at once.
    with pytest.raises(data.DataUnavailableError) as caught:
        data.fetch_movielens(cache, url="http://127.0.0.1:9/ml-latest-small.zip")
    message = str(caught.value)
    assert str(cache / data.ZIP_NAME) in message
    assert "by hand" in message
    assert not any(cache.iterdir())


def test_seed_cache_refuses_a_wrong_zip(tmp_path):
    wrong = tmp_path / "ml-latest-small.zip"
    wrong.write_bytes(_build_zip())
    with pytest.raises(data.ChecksumError, match="zip_path"):
        data.seed_cache(wrong, tmp_path / "cache")
    assert not (tmp_path / "cache" / data.ZIP_NAME).exists()


def test_seed_cache_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="zip_path"):
        data.seed_cache(tmp_path / "nope.zip", tmp_path / "cache")


def test_data_dir_follows_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert data.data_dir() == tmp_path / "elsewhere"


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
