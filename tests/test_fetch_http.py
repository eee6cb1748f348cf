"""Verified fetch over real HTTP on loopback: every fault of issue 3, with the real model file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_SHA, DEFAULT_SIZE
from locara.errors import FetchError, IntegrityError, OfflineError
from locara.registry.catalog import Registry
from locara.settings import Settings
from locara.store.blobs import BlobStore, hash_file
from locara.store.fetch import ensure_artifact, partial_files
from locara.store.http import HttpOptions
from loopback_server import LoopbackServer, write_manifest

FAST = HttpOptions(attempts=4, backoff_s=0.01)
PATH = "/org/repo/resolve/main/model.gguf"


@pytest.fixture
def server(default_gguf: Path) -> Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.add(PATH, default_gguf)
    yield srv
    srv.stop()


def _settings(home: Path, reg: Path, **env: str) -> Settings:
    return Settings.from_env({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(reg), **env})


def _pull(settings: Settings, model_id: str = "loop") -> Path:
    m = Registry(settings).get(model_id)
    art = m.artifact_list("llama_cpp")[0]
    return ensure_artifact(BlobStore(settings), m, art, settings, None, FAST).path


@pytest.fixture
def reg(tmp_path: Path, server: LoopbackServer) -> Path:
    d = tmp_path / "reg"
    write_manifest(
        d, "loop", {"url": server.url + PATH, "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE}
    )
    return d


def _no_wrong_blobs(home: Path) -> None:
    """The store invariant: every file under a content name has that content."""
    models = home / "models"
    for d in models.iterdir() if models.is_dir() else []:
        if d.name.startswith("."):
            continue
        f = d / "model.gguf"
        if f.exists():
            assert hash_file(f)[0] == d.name


def test_download_verifies_and_stores_read_only(
    home: Path, reg: Path, server: LoopbackServer
) -> None:
    s = _settings(home, reg)
    path = _pull(s)
    assert path == home / "models" / DEFAULT_SHA / "model.gguf"
    assert hash_file(path) == (DEFAULT_SHA, DEFAULT_SIZE)
    assert path.stat().st_mode & 0o222 == 0
    assert [e.status for e in server.requests(PATH)] == [200]
    # a second pull is served from the store: no request at all
    _pull(s)
    assert len(server.requests(PATH)) == 1


@pytest.mark.parametrize(
    ("mode", "params", "expected"),
    [
        ("wrong_bytes", {}, "sha256"),
        ("short", {"missing": 4096}, "size"),
        ("extra", {"extra": 4096}, "size"),
        ("extra_unannounced", {"extra": 4096}, "size"),
    ],
)
def test_bad_bytes_are_refused_and_nothing_is_kept(
    home: Path, reg: Path, server: LoopbackServer, mode: str, params: dict[str, int], expected: str
) -> None:
    server.fault(PATH, mode, **params)
    s = _settings(home, reg)
    with pytest.raises(IntegrityError) as err:
        _pull(s)
    assert err.value.expected in (DEFAULT_SHA, f"{DEFAULT_SIZE} bytes")
    assert err.value.actual != err.value.expected
    assert err.value.hint
    assert not (home / "models" / DEFAULT_SHA).exists()
    assert partial_files(s, DEFAULT_SHA) == []
    if mode == "wrong_bytes":
        assert len(err.value.actual) == 64 and err.value.actual != DEFAULT_SHA
    elif mode == "extra_unannounced":
        # no length in the headers: caught while streaming, at the first byte too many
        assert "more bytes than declared" in err.value.message
    else:
        # a size that differs is caught from the headers, before the body is read
        assert server.sent(PATH) < DEFAULT_SIZE


def test_cut_connection_resumes_with_only_the_missing_bytes(
    home: Path, reg: Path, server: LoopbackServer
) -> None:
    server.fault(PATH, "cut", at=40_000_000)
    path = _pull(_settings(home, reg))
    assert hash_file(path)[0] == DEFAULT_SHA
    first, second = server.requests(PATH)
    assert first.range is None and first.status == 200
    assert second.status == 206 and second.range is not None
    start = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 40_000_000
    assert second.sent == DEFAULT_SIZE - start  # only what was missing


def test_server_ignoring_range_restarts_cleanly(
    home: Path, reg: Path, server: LoopbackServer
) -> None:
    s = _settings(home, reg)
    # a real prefix left by a dead process, then a server that ignores Range
    s.tmp_dir.mkdir(parents=True, exist_ok=True)
    data = (Path(server.files[PATH])).read_bytes()[:20_000_000]
    (s.tmp_dir / f"{DEFAULT_SHA}.999999999-dead.part").write_bytes(data)
    server.fault(PATH, "ignore_range")
    path = _pull(s)
    assert hash_file(path)[0] == DEFAULT_SHA
    (only,) = server.requests(PATH)
    assert only.range == "bytes=20000000-" and only.status == 200
    assert partial_files(s, DEFAULT_SHA) == []


def test_stale_partial_with_wrong_prefix_is_refused_then_next_pull_works(
    home: Path, reg: Path, server: LoopbackServer
) -> None:
    s = _settings(home, reg)
    s.tmp_dir.mkdir(parents=True, exist_ok=True)
    (s.tmp_dir / f"{DEFAULT_SHA}.999999999-dead.part").write_bytes(b"\0" * 1_000_000)
    with pytest.raises(IntegrityError):
        _pull(s)
    assert partial_files(s, DEFAULT_SHA) == []
    assert hash_file(_pull(s))[0] == DEFAULT_SHA


def test_429_and_503_are_retried(home: Path, reg: Path, server: LoopbackServer) -> None:
    server.fault(PATH, "status", codes=[429, 503, 502])
    path = _pull(_settings(home, reg))
    assert hash_file(path)[0] == DEFAULT_SHA
    assert [e.status for e in server.requests(PATH)] == [429, 503, 502, 200]


def test_persistent_503_gives_up_with_a_hint(home: Path, reg: Path, server: LoopbackServer) -> None:
    server.fault(PATH, "status", codes=[503] * 10)
    with pytest.raises(FetchError) as err:
        _pull(_settings(home, reg))
    assert "after 4 attempts" in err.value.message and "HTTP 503" in err.value.message
    assert err.value.hint


def test_read_timeout_is_retried_then_reported(
    home: Path, reg: Path, server: LoopbackServer
) -> None:
    import httpx

    server.fault(PATH, "stall", at=5_000_000, timeout=5)
    s = _settings(home, reg)
    m = Registry(s).get("loop")
    opts = HttpOptions(timeout=httpx.Timeout(2.0, read=0.3), attempts=2, backoff_s=0.01)
    with pytest.raises(FetchError) as err:
        ensure_artifact(BlobStore(s), m, m.artifact_list("llama_cpp")[0], s, None, opts)
    assert "timed out" in err.value.message
    # the bytes that did arrive are kept for a resume
    (part,) = partial_files(s, DEFAULT_SHA)
    kept = part.stat().st_size
    assert kept >= 5_000_000
    # the retry within the same pull already asked only for the rest
    assert server.requests(PATH)[1].range == "bytes=5000000-"
    server.release.set()
    server.fault(PATH, "ok")
    assert hash_file(_pull(s))[0] == DEFAULT_SHA
    last = server.requests(PATH)[-1]
    assert last.range == f"bytes={kept}-" and last.sent == DEFAULT_SIZE - kept


def test_mirrors_are_tried_in_order(home: Path, tmp_path: Path, server: LoopbackServer) -> None:
    server.add("/bad.gguf", server.files[PATH])
    server.fault("/bad.gguf", "wrong_bytes")
    reg = tmp_path / "reg"
    write_manifest(
        reg,
        "loop",
        {
            "url": server.url + "/missing.gguf",
            "mirrors": [server.url + "/bad.gguf", server.url + PATH],
            "sha256": DEFAULT_SHA,
            "size_bytes": DEFAULT_SIZE,
        },
    )
    path = _pull(_settings(home, reg))
    assert hash_file(path)[0] == DEFAULT_SHA
    order = [e.path for e in server.log]
    assert order == ["/missing.gguf", "/bad.gguf", PATH]


def test_all_sources_failing_names_each(home: Path, tmp_path: Path, server: LoopbackServer) -> None:
    reg = tmp_path / "reg"
    write_manifest(
        reg,
        "loop",
        {"url": server.url + "/a.gguf", "mirrors": [server.url + "/b.gguf"], "sha256": DEFAULT_SHA},
    )
    with pytest.raises(FetchError) as err:
        _pull(_settings(home, reg))
    assert "/a.gguf" in err.value.message and "/b.gguf" in err.value.message


def test_hf_shorthand_and_token(home: Path, tmp_path: Path, server: LoopbackServer) -> None:
    server.fault(PATH, "auth", token="hf_secret")
    reg = tmp_path / "reg"
    write_manifest(
        reg,
        "loop",
        {"url": "hf://org/repo/model.gguf", "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE},
    )
    with pytest.raises(FetchError) as err:
        _pull(_settings(home, reg, HF_ENDPOINT=server.url))
    assert err.value.status == 401 and "HF_TOKEN" in (err.value.hint or "")
    path = _pull(_settings(home, reg, HF_ENDPOINT=server.url, HF_TOKEN="hf_secret"))
    assert hash_file(path)[0] == DEFAULT_SHA
    assert server.requests(PATH)[-1].authorization == "Bearer hf_secret"


def test_token_is_not_sent_to_other_hosts(home: Path, reg: Path, server: LoopbackServer) -> None:
    _pull(_settings(home, reg, HF_ENDPOINT="https://huggingface.co", HF_TOKEN="hf_secret"))
    assert server.requests(PATH)[0].authorization is None


@pytest.mark.parametrize(
    "src", ["hf://org/repo", "hf://org/../x/f.gguf", "hf://org/repo/../../etc/passwd", "hf:///a/b"]
)
def test_bad_hf_sources_are_refused(src: str, home: Path) -> None:
    from locara.store.http import resolve_url

    with pytest.raises(FetchError) as err:
        resolve_url(src, Settings.from_env({"LOCARA_HOME": str(home)}))
    assert "hf://owner/repo" in (err.value.hint or "")


def test_offline_is_an_immediate_clear_error(home: Path, reg: Path, server: LoopbackServer) -> None:
    with pytest.raises(OfflineError) as err:
        _pull(_settings(home, reg, LOCARA_OFFLINE="1"))
    assert "LOCARA_OFFLINE" in (err.value.hint or "")
    assert server.log == []


def test_offline_still_serves_cached_models(home: Path, reg: Path, server: LoopbackServer) -> None:
    _pull(_settings(home, reg))
    path = _pull(_settings(home, reg, LOCARA_OFFLINE="1"))
    assert path.is_file() and len(server.log) == 1


def test_unreachable_host_fails_fast(home: Path, tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    # port 9 on loopback: nothing listens; connection refused at once
    write_manifest(reg, "loop", {"url": "http://127.0.0.1:9/m.gguf", "sha256": DEFAULT_SHA})
    with pytest.raises(FetchError) as err:
        _pull(_settings(home, reg))
    assert "cannot connect" in err.value.message and "after 2 attempts" in err.value.message
    assert "LOCARA_OFFLINE=1" in (err.value.hint or "")


class _NoLock:
    """A lock that silently does nothing, as file locks do on some network filesystems."""

    def __init__(self, *a: object, **k: object) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_correctness_does_not_depend_on_the_lock(
    home: Path, reg: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import locara.store.fetch as fetch_mod

    monkeypatch.setattr(fetch_mod, "exclusive_lock", _NoLock)
    server.fault(PATH, "slow", rate=150_000_000)  # long enough for the three to overlap
    s = _settings(home, reg)
    results: list[object] = []

    def pull() -> None:
        try:
            results.append(_pull(s))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Path) for r in results), results
    # three downloads (no lock), three unique partial files, one verified blob
    assert len(server.requests(PATH)) == 3
    assert all(e.range is None for e in server.requests(PATH))
    assert hash_file(home / "models" / DEFAULT_SHA / "model.gguf")[0] == DEFAULT_SHA
    assert partial_files(s, DEFAULT_SHA) == []
    _no_wrong_blobs(home)
