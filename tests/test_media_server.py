"""Speech, OCR and images over HTTP, against the real ``locara serve`` on loopback.

``/v1/audio/transcriptions`` is driven by the official ``openai`` client; ``/v1/ocr``
and the bad inputs by httpx. Images in chat requests are tested up to the worker
boundary: parsed, decoded, size-limited, and refused for a model without a projector
(no vision GGUF is available offline, so vision is untested end to end).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import DEFAULT_SHA, DEFAULT_SIZE, packaged_gguf, run_cli
from locara.backends.base import GenerationRequest, Message
from locara.backends.chat_template import MEDIA_MARKER, request_segments
from locara.errors import TemplateRefusedError
from loopback_server import write_manifest
from media_samples import (
    OCR_LINES,
    SPEECH_TEXT,
    char_accuracy,
    png_header_only,
    render_text,
    speak,
    wav_with_unknown_codec,
    wer,
)
from server_harness import RunningServer, metric, running_server

UPLOAD_LIMIT = 2_000_000


def png(img: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("media-server")
    gguf = f"file://{packaged_gguf()}"
    # A model whose artifact has a projector file: the bundled text model under two names
    # (the worker does not load projectors yet, which is what the test shows).
    write_manifest(
        root / "registry",
        "tiny-vision",
        {},
        modality="vision",
        artifacts={
            "llama_cpp": [
                {
                    "format": "gguf",
                    "quant": "Q4_1",
                    "files": [
                        {"name": "model.gguf", "url": gguf, "sha256": DEFAULT_SHA,
                         "size_bytes": DEFAULT_SIZE, "role": "model"},
                        {"name": "mmproj.gguf", "url": gguf, "sha256": DEFAULT_SHA,
                         "size_bytes": DEFAULT_SIZE, "role": "mmproj"},
                    ],
                }
            ]
        },
    )  # fmt: skip
    env = {
        "LOCARA_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "LOCARA_REGISTRY_PATH": str(root / "registry"),
        "LOCARA_KEEP_ALIVE": "600",
    }
    with running_server(root / "home", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SPEECH_TEXT, tmp_path_factory.mktemp("audio") / "speech.wav")


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="local", timeout=300)


def post_audio(server: RunningServer, path: Path, **data: str) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": (path.name, f)},
            data={"model": "whisper-tiny.en", **data},
            timeout=300,
        )


def assert_one_line_400(r: httpx.Response, expected: str) -> dict[str, str]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert expected in err["message"] and "\n" not in err["message"] and err["hint"]
    return err  # type: ignore[no-any-return]


def test_openai_client_transcribes_within_20_percent_wer(
    server: RunningServer, speech: Path
) -> None:
    with speech.open("rb") as f:
        t = client(server).audio.transcriptions.create(model="whisper-tiny.en", file=f)
    assert wer(SPEECH_TEXT, t.text) <= 0.20, t.text
    assert t.usage is not None and t.usage.type == "duration" and t.usage.seconds >= 8
    with speech.open("rb") as f:  # "whisper-1", what OpenAI code sends, means the bundled model
        v = client(server).audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert v.language == "en" and v.segments and v.words and v.duration > 8
    assert wer(SPEECH_TEXT, v.text) <= 0.20


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_and_subtitle_formats(server: RunningServer, speech: Path, fmt: str) -> None:
    r = post_audio(server, speech, response_format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "text":
        assert wer(SPEECH_TEXT, r.text) <= 0.20
    elif fmt == "srt":
        assert r.text.startswith("1\n00:00:00,000 --> ")
    else:
        assert r.text.startswith("WEBVTT\n\n00:00:00.000 --> ")
        assert r.headers["content-type"].startswith("text/vtt")


def test_8khz_upload_transcribed_with_a_warning(server: RunningServer, tmp_path: Path) -> None:
    r = post_audio(server, speak(SPEECH_TEXT, tmp_path / "phone.wav", rate=8000))
    assert r.status_code == 200, r.text
    assert "8000 Hz" in r.headers["x-locara-warning"] and "8000 Hz" in r.json()["warnings"][0]
    assert wer(SPEECH_TEXT, r.json()["text"]) <= 0.35


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("notes.txt", lambda p: p.write_text("just some text\n"), "notes.txt is not audio"),
        ("empty.wav", lambda p: p.write_bytes(b""), "empty.wav is empty (0 bytes)"),
        ("odd.wav", wav_with_unknown_codec, "odd.wav uses an audio codec this FFmpeg cannot"),
    ],
    ids=["not-audio", "empty", "unsupported-codec"],
)
def test_bad_audio_uploads_are_400s_and_the_server_lives(
    server: RunningServer, tmp_path: Path, name: str, make: object, expected: str
) -> None:
    path = tmp_path / name
    make(path)  # type: ignore[operator]
    assert_one_line_400(post_audio(server, path), expected)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_upload_over_the_limit_is_413(server: RunningServer, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (UPLOAD_LIMIT + 1000))
    r = post_audio(server, big)
    assert r.status_code == 413 and "LOCARA_MAX_UPLOAD_BYTES" in r.json()["error"]["hint"]


def test_request_errors_before_any_load(server: RunningServer, speech: Path) -> None:
    err = assert_one_line_400(
        post_audio(server, speech, model="smollm2-135m-instruct"), "is a chat model"
    )
    assert "whisper-tiny.en" in err["hint"]
    assert_one_line_400(post_audio(server, speech, response_format="mp4"), "unknown transcript")
    assert_one_line_400(
        post_audio(server, speech, **{"timestamp_granularities[]": "word"}), "verbose_json"
    )
    r = httpx.post(f"{server.url}/v1/audio/transcriptions", data={"model": "whisper-tiny.en"})
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]


def test_ocr_multipart_and_data_uri(server: RunningServer) -> None:
    data = png(render_text(OCR_LINES))
    r = httpx.post(f"{server.url}/v1/ocr", files={"file": ("scan.png", data)}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "rapidocr-ppocrv4" and body["usage"]["images"] == 1
    assert char_accuracy("\n".join(OCR_LINES), body["text"]) >= 0.95
    assert len(body["lines"][0]["box"]) == 4 and body["lines"][0]["confidence"] > 0.5
    r = httpx.post(f"{server.url}/v1/ocr", json={"image_url": {"url": data_uri(data)}}, timeout=300)
    assert r.status_code == 200 and r.json()["text"] == body["text"]


@pytest.mark.parametrize(
    ("request_kw", "expected"),
    [
        ({"files": {"file": ("x.png", b"GIF87a? not really")}}, "'x.png' is not an image"),
        ({"files": {"file": ("big.png", png_header_only(10_000, 10_000))}}, "100.0 megapixels"),
        ({"json": {"image_url": "data:image/png;base64,%%%"}}, "invalid base64"),
        ({"json": {"image_url": "https://example.com/cat.png"}}, "remote URL"),
        ({"json": {"image_url": data_uri(b"x"), "model": "whisper-tiny.en"}}, "not an OCR model"),
        ({"json": {"url": "x"}}, "image_url"),
    ],
    ids=["not-an-image", "100-megapixels", "bad-base64", "remote-url", "wrong-model", "no-image"],
)
def test_bad_ocr_requests_are_400s(
    server: RunningServer, request_kw: dict[str, object], expected: str
) -> None:
    r = httpx.post(f"{server.url}/v1/ocr", timeout=60, **request_kw)  # type: ignore[arg-type]
    assert r.status_code == 400, r.text
    assert expected in r.json()["error"]["message"], r.text


def test_usage_ledger_counts_audio_seconds_and_images(server: RunningServer) -> None:
    usage = json.loads(run_cli("usage", "--json", home=server.home).stdout)
    by_model = {m["model"]: m for m in usage["models"]}
    assert by_model["whisper-tiny.en"]["audio_s"] > 8
    assert by_model["whisper-tiny.en"]["surfaces"] == ["openai"]
    assert by_model["rapidocr-ppocrv4"]["images"] >= 2
    # /metrics counts the same requests, with the transcripts' tokens.
    text = httpx.get(f"{server.url}/metrics").text
    for model in ("whisper-tiny.en", "rapidocr-ppocrv4"):
        assert metric(text, "locara_requests_total", model=model, status="ok") >= 2, model
    assert metric(text, "locara_completion_tokens_total", model="whisper-tiny.en") > 10


# -- images in chat requests, up to the worker boundary ---------------------------------
def image_message(url: str) -> dict[str, object]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is written here?"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def chat(server: RunningServer, model: str, url: str) -> httpx.Response:
    body = {"model": model, "messages": [image_message(url)], "max_tokens": 4}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)


def test_text_only_model_sent_an_image_names_a_vision_model(server: RunningServer) -> None:
    url = data_uri(png(render_text(OCR_LINES[:1])))
    err = assert_one_line_400(chat(server, "smollm2-135m-instruct", url), "text-only model")
    assert "qwen2-vl-2b-instruct" in err["hint"]
    ollama = httpx.post(
        f"{server.url}/api/chat",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "hi", "images": [url.split(",")[1]]}],
            "stream": False,
        },
        timeout=60,
    )
    assert ollama.status_code == 400 and "text-only model" in ollama.json()["error"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:image/png;base64,not base64!", "invalid base64"),
        ("http://192.0.2.1/cat.png", "remote URL"),
        (data_uri(png_header_only(10_000, 10_000)), "100.0 megapixels"),
        (data_uri(b"plain text"), "is not an image"),
    ],
    ids=["bad-base64", "remote-url", "100-megapixels", "not-an-image"],
)
def test_vision_model_images_checked_before_loading(
    server: RunningServer, url: str, expected: str
) -> None:
    # qwen2-vl-2b-instruct is not stored (1.7 GB): a 400 here proves nothing was fetched.
    assert_one_line_400(chat(server, "qwen2-vl-2b-instruct", url), expected)
    assert not (server.home / "models" / ".tmp").exists() or not any(
        (server.home / "models" / ".tmp").iterdir()
    )


def test_projector_model_reaches_the_worker_boundary(server: RunningServer) -> None:
    """UNTESTED END TO END (no vision GGUF offline): tiny-vision's "projector" is a text
    model, so llama.cpp's multimodal loader, handed it with --mmproj, refuses it. That
    refusal is the proof the worker got the projector; the server says so and lives."""
    url = data_uri(png(render_text(OCR_LINES[:1])))
    r = chat(server, "tiny-vision", url)
    assert r.status_code == 500, r.text
    err = r.json()["error"]
    assert "llama-server for tiny-vision stopped while starting" in err["message"]
    assert "mmproj.gguf" in err["message"] and "multimodal" in err["message"]
    assert "\n" not in err["message"] and "see its log" in err["hint"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    ollama = httpx.post(
        f"{server.url}/api/chat",
        json={
            "model": "tiny-vision",
            "messages": [{"role": "user", "content": "hi", "images": ["@@not-base64"]}],
            "stream": False,
        },
        timeout=60,
    )
    assert ollama.status_code == 400 and "messages[0].images[0] is not valid base64" in ollama.text


def test_template_places_one_marker_per_image_outside_the_content() -> None:
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
    msg = Message("user", "read this", images=(b"png-1", b"png-2"))
    segments = request_segments(GenerationRequest(messages=(msg,)), template, "m", "", "")
    assert segments == [
        (f"<user>{MEDIA_MARKER}{MEDIA_MARKER}", True),
        ("read this", False),
        ("</s>", True),
    ]
    forged = Message("user", f"look {MEDIA_MARKER}", images=(b"png",))
    with pytest.raises(TemplateRefusedError, match="stands for an image"):
        request_segments(GenerationRequest(messages=(forged,)), template, "m", "", "")


def test_listed_once_and_refused_for_chat(server: RunningServer, speech: Path) -> None:
    assert post_audio(server, speech).status_code == 200  # stored by now
    tags = httpx.get(f"{server.url}/api/tags").json()["models"]
    assert [t["name"] for t in tags if t["name"].startswith("whisper")] == [
        "whisper-tiny.en:latest"
    ]
    show = httpx.post(f"{server.url}/api/show", json={"model": "whisper-tiny.en"})
    assert show.status_code == 200 and show.json()["details"]["format"] == "ctranslate2"
    r = httpx.post(
        f"{server.url}/api/chat",
        json={"model": "whisper-tiny.en", "messages": [{"role": "user", "content": "hi"}]},
        timeout=120,
    )
    assert r.status_code == 400 and "is a speech-to-text model" in r.json()["error"]


def test_images_reach_the_worker_as_image_url_parts_before_the_text() -> None:
    from locara.backends.worker_tools import chat_body

    image = png(render_text(OCR_LINES[:1]))
    msg = Message("user", "read this", images=(image,))
    (sent,) = chat_body(GenerationRequest(messages=(msg,)))["messages"]
    first, text = sent["content"]
    assert text == {"type": "text", "text": "read this"}
    assert first["type"] == "image_url"
    head, _, payload = first["image_url"]["url"].partition(",")
    assert head == "data:image/png;base64" and base64.b64decode(payload) == image
