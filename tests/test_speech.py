"""Speech to text with the bundled Whisper tiny.en: accuracy, formats, bad audio, memory.

Speech is made offline by espeak-ng (+ sox); the tests skip, saying what to install,
without them. The model is the real one from the store, loaded once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from locara.backends.media import TranscribeRequest
from locara.engine.loader import ModelHandle, load, resolve
from locara.engine.media import transcribe
from locara.errors import UnsupportedFeatureError, UsageError
from locara.ledger.db import UsageDB
from locara.settings import Settings
from media_samples import (
    SPEECH_TEXT,
    require_speech_tools,
    speak,
    transcode,
    wav_with_unknown_codec,
    wer,
)

MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def media_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech-home")


@pytest.fixture(scope="module")
def cfg(media_home: Path) -> Settings:
    return Settings.from_env({"LOCARA_HOME": str(media_home)})


@pytest.fixture(scope="module")
def whisper(cfg: Settings) -> Iterator[ModelHandle]:
    handle = load(cfg, resolve(cfg, MODEL))
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_speech_tools()
    return speak(SPEECH_TEXT, tmp_path_factory.mktemp("audio") / "speech.wav")


def run(cfg: Settings, handle: ModelHandle, path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return transcribe(cfg, handle, path, TranscribeRequest(**kw), app="test", surface="cli")  # type: ignore[arg-type]


def test_plan_and_store_treat_it_like_any_model(whisper: ModelHandle) -> None:
    plan = whisper.plan
    assert plan.ok and plan.backend == "faster_whisper" and plan.n_threads
    assert plan.ram_bytes > whisper.resolved.blob.size_bytes  # weights + one audio window
    # the four packaged files, stored under their own hashes, assembled as one artifact
    names = sorted(p.name for p in whisper.resolved.blob.path.parent.iterdir() if p.is_file())
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= set(names)
    assert whisper.model.capabilities.transcribe and not whisper.model.capabilities.chat


def test_espeak_speech_transcribed_within_20_percent_wer(
    cfg: Settings, whisper: ModelHandle, speech: Path
) -> None:
    t = run(cfg, whisper, speech)
    assert wer(SPEECH_TEXT, t.text) <= 0.20, t.text
    assert t.language == "en" and 8 < t.duration_s < 20 and not t.warnings
    assert t.segments and t.segments[0].start < 1 and t.segments[-1].end <= t.duration_s + 0.5
    # one ledger row, measured in audio seconds
    rows = [r for r in UsageDB(cfg.usage_db_path).rows() if r["model_id"] == MODEL]
    assert rows and rows[-1]["status"] == "ok" and rows[-1]["backend"] == "faster_whisper"
    assert rows[-1]["audio_s"] == pytest.approx(t.duration_s, abs=0.01)
    assert rows[-1]["completion_tokens"] == t.tokens > 0


@pytest.mark.parametrize(
    ("ext", "codec"), [("mp3", "mp3"), ("m4a", "aac"), ("ogg", "libopus"), ("flac", "flac")]
)
def test_common_formats_decode_to_the_same_audio(
    speech: Path, tmp_path: Path, ext: str, codec: str
) -> None:
    from locara.media import audio

    encoded = transcode(speech, tmp_path / f"speech.{ext}", codec)
    info = audio.probe(encoded)
    seconds = sum(w.size for w in audio.windows(encoded)) / audio.SAMPLE_RATE
    assert info.codec in (codec.removeprefix("lib"), codec)
    assert seconds == pytest.approx(audio.probe(speech).duration_s, abs=0.15)


def test_mp3_transcribed_as_well_as_wav(
    cfg: Settings, whisper: ModelHandle, speech: Path, tmp_path: Path
) -> None:
    mp3 = transcode(speech, tmp_path / "speech.mp3", "mp3")
    assert wer(SPEECH_TEXT, run(cfg, whisper, mp3).text) <= 0.20


def test_8khz_audio_is_upsampled_with_a_warning(
    cfg: Settings, whisper: ModelHandle, tmp_path: Path
) -> None:
    t = run(cfg, whisper, speak(SPEECH_TEXT, tmp_path / "phone.wav", rate=8000))
    assert len(t.warnings) == 1 and "8000 Hz" in t.warnings[0]
    assert wer(SPEECH_TEXT, t.text) <= 0.35, t.text


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text("hello, I am a text file\n") and p, "is not audio"),
        (lambda p: p.write_bytes(b"") or p, "is empty (0 bytes)"),
        (wav_with_unknown_codec, "audio codec this FFmpeg cannot decode"),
    ],
    ids=["not-audio", "empty", "unsupported-codec"],
)
def test_bad_audio_is_one_line_with_a_hint(
    cfg: Settings, whisper: ModelHandle, tmp_path: Path, make: object, expected: str
) -> None:
    path = make(tmp_path / "input.wav")  # type: ignore[operator]
    with pytest.raises(UsageError) as err:
        run(cfg, whisper, path)
    assert expected in err.value.message and "\n" not in err.value.message
    assert err.value.hint
    rows = UsageDB(cfg.usage_db_path).rows()
    assert rows[-1]["status"] == "error" and expected in rows[-1]["error"]


def test_english_only_model_refuses_another_language(
    cfg: Settings, whisper: ModelHandle, speech: Path
) -> None:
    with pytest.raises(UsageError, match="English only"):
        run(cfg, whisper, speech, language="de")


def test_speech_model_refuses_chat(whisper: ModelHandle) -> None:
    from locara.backends.base import GenerationRequest, Message

    with pytest.raises(UnsupportedFeatureError, match="speech-to-text model"):
        next(iter(whisper.model.generate(GenerationRequest(messages=(Message("user", "hi"),)))))


def test_windows_are_stitched_on_the_file_clock(
    cfg: Settings, whisper: ModelHandle, speech: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long file is transcribed window after window (5 minutes each); with 4-second
    windows this short one takes three, and the segments still read in order on the
    file's clock (a word cut at a window edge may be lost)."""
    from locara.media import audio

    monkeypatch.setattr(audio, "WINDOW_S", 4)
    seen: list[float] = []
    t = transcribe(
        cfg, whisper, speech, TranscribeRequest(), app="test", surface="cli",
        progress=lambda done, total: seen.append(done),
    )  # fmt: skip
    starts = [s.start for s in t.segments]
    assert (
        starts == sorted(starts) and max(starts) >= 8 and t.segments[-1].end <= t.duration_s + 0.5
    )
    assert {4.0, 8.0} <= set(seen) and seen[-1] == pytest.approx(t.duration_s)
    assert wer(SPEECH_TEXT, t.text) <= 0.40, t.text


def test_two_hour_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Decoded whole, two hours at 16 kHz is 460 MB of float32; in windows it stays small."""
    require_speech_tools()
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    long = tmp_path / "two-hours.flac"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", str(long), "trim", "0", "7200"], check=True
    )
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from locara.media import audio
        seconds = sum(w.size for w in audio.windows(Path({str(long)!r}))) / audio.SAMPLE_RATE
        # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)
        status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
        print(seconds, int(status.split()[0]) // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, peak_mb = out.stdout.split()
    assert float(seconds) == pytest.approx(7200, abs=0.1)
    assert int(peak_mb) < 250, f"peak RSS {peak_mb} MB while decoding two hours"


def test_cli_transcribe_formats_and_errors(media_home: Path, speech: Path, tmp_path: Path) -> None:
    srt = run_cli("transcribe", str(speech), "--format", "srt", home=media_home)
    assert srt.returncode == 0, srt.stderr
    first = srt.stdout.split("\n\n")[0].splitlines()
    assert first[0] == "1" and " --> " in first[1] and first[1].startswith("00:00:00,")
    js = run_cli("transcribe", str(speech), "--format", "json", "--words", home=media_home)
    body = json.loads(js.stdout)
    assert body["language"] == "en" and body["segments"] and body["words"]
    assert wer(SPEECH_TEXT, body["text"]) <= 0.20
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    res = run_cli("transcribe", str(bad), home=media_home)
    assert res.returncode == 1
    assert res.stderr.splitlines()[0].startswith("error: notes.txt is not audio")
    assert res.stderr.splitlines()[1].startswith("  hint: send wav, mp3")


def test_ls_rm_and_usage_treat_it_like_any_model(tmp_path: Path, speech: Path) -> None:
    home = tmp_path / "home"
    assert run_cli("transcribe", str(speech), home=home).returncode == 0
    ls = json.loads(run_cli("ls", "--json", home=home).stdout)
    assert [r["id"] for r in ls] == [MODEL]  # one row for the assembled artifact
    plan = run_cli("plan", MODEL, home=home)
    assert plan.returncode == 0 and "backend    faster_whisper" in plan.stdout
    show = run_cli("show", MODEL, home=home)
    assert show.returncode == 0 and "modality        stt" in show.stdout
    assert "  stored: " in show.stdout
    usage = json.loads(run_cli("usage", "--json", home=home).stdout)
    (row,) = usage["models"]
    assert row["model"] == MODEL and row["audio_s"] > 8 and row["images"] == 0
    cleanup = json.loads(run_cli("cleanup", "--json", home=home).stdout)["models"]
    tree = next(m for m in cleanup if not m["part_of"])
    assert tree["model"] == MODEL and tree["status"] == "active" and tree["last_used"]
    assert run_cli("rm", MODEL, home=home).returncode == 0
    assert json.loads(run_cli("ls", "--json", home=home).stdout) == []
    # from its package again, verified, on the next use
    assert run_cli("transcribe", str(speech), home=home).returncode == 0
