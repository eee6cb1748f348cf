"""Manifests, references and names: strict parsing, the curated registry, signatures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import DEFAULT_SHA, run_cli
from locara.errors import InvalidReferenceError, ManifestError, UnknownModelError
from locara.registry.catalog import Registry, builtin_registry_dir, load_manifest
from locara.registry.manifest import Artifact, manifest_json_schema, tree_digest
from locara.registry.names import check_filename, check_model_id, check_sha256
from locara.registry.refs import parse_ref
from locara.registry.signing import public_key_text, sign_manifest
from locara.settings import Settings
from locara.store.blobs import BlobStore
from locara.store.sources import local_path
from loopback_server import write_manifest

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO.parent / "shared" / "registry-facts.json"

BAD_IDS = ["../x", "a/b", "/abs", "a\0b", "", "Upper", "x" * 200, "a..b", ".hidden", "a b"]
BAD_DIGESTS = [
    "../" + "a" * 61,
    "a" * 63,
    "a" * 65,
    "A" * 64,
    DEFAULT_SHA.upper(),
    "g" * 64,
    DEFAULT_SHA[:-1] + "/",
    DEFAULT_SHA[:-1] + "\0",
]
BAD_FILES = ["../x.gguf", "a/b.gguf", "/etc/passwd", "x\0.gguf", "..", ".", "", "-rf"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_ids_are_rejected(value: str) -> None:
    with pytest.raises(InvalidReferenceError) as err:
        check_model_id(value)
    assert err.value.hint


@pytest.mark.parametrize("value", BAD_DIGESTS)
def test_bad_digests_are_rejected_before_touching_the_disk(value: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = BlobStore(Settings.from_env({"LOCARA_HOME": str(home)}))
    with pytest.raises(InvalidReferenceError) as err:
        store.blob_dir(value)
    assert "64 lowercase hex" in (err.value.hint or "")
    with pytest.raises(InvalidReferenceError):
        store.find(value)
    with pytest.raises(InvalidReferenceError):
        store.ingest(iter([b"x"]), value, 1, "gguf", {})
    assert not home.exists()


@pytest.mark.parametrize("value", BAD_FILES)
def test_bad_filenames_are_rejected(value: str) -> None:
    with pytest.raises(InvalidReferenceError):
        check_filename(value)


@pytest.mark.parametrize(
    "text",
    [
        "m@sha256:" + "A" * 64,
        "m@sha256:abc",
        "m@md5:" + "a" * 64,
        "m@" + DEFAULT_SHA,
        "m:",
        "m:../x",
        "m:Q4/K",
        "../m",
        "m@sha256:" + DEFAULT_SHA + "/..",
        "",
    ],
)
def test_bad_references_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as err:
        parse_ref(text)
    assert err.value.hint == "use MODEL, MODEL:QUANT or MODEL@sha256:<64 hex>"


def test_good_references() -> None:
    assert parse_ref("qwen2.5-3b-instruct").id == "qwen2.5-3b-instruct"
    r = parse_ref("qwen2.5-3b-instruct:Q4_K_M")
    assert (r.id, r.quant, r.sha256) == ("qwen2.5-3b-instruct", "Q4_K_M", None)
    r = parse_ref(f"smollm2-135m-instruct@sha256:{DEFAULT_SHA}")
    assert r.sha256 == DEFAULT_SHA and str(r) == f"smollm2-135m-instruct@sha256:{DEFAULT_SHA}"
    assert check_sha256(check_model_id("a") and DEFAULT_SHA) == DEFAULT_SHA


def test_manifest_with_a_traversal_filename_is_refused(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path,
        "evil",
        {
            "files": [
                {
                    "name": "../../x.gguf",
                    "url": "https://h/x",
                    "sha256": DEFAULT_SHA,
                    "size_bytes": 1,
                }
            ]
        },
    )
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert "files" in err.value.message


def test_manifest_strictness(tmp_path: Path) -> None:
    base = {"url": "https://h/x.gguf", "sha256": DEFAULT_SHA, "size_bytes": 10}
    for bad, where in [
        ({**base, "sha256": DEFAULT_SHA.upper()}, "sha256"),
        ({**base, "url": "ftp://h/x"}, "url"),
        ({**base, "size_bytes": -1}, "size_bytes"),
        ({**base, "surprise": 1}, "surprise"),
        ({"sha256": DEFAULT_SHA}, "url or at least one mirror"),
    ]:
        path = write_manifest(tmp_path, "m", bad)
        with pytest.raises(ManifestError) as err:
            load_manifest(path)
        assert where in err.value.message
    path = write_manifest(tmp_path, "other-name", base)
    path.rename(tmp_path / "m.json")
    with pytest.raises(ManifestError, match="declares id"):
        load_manifest(tmp_path / "m.json")


def test_multi_file_artifact_digest() -> None:
    files = [
        {
            "name": "m-00001-of-00002.gguf",
            "url": "https://h/1",
            "sha256": "1" * 64,
            "size_bytes": 5,
            "role": "part",
        },
        {
            "name": "m-00002-of-00002.gguf",
            "url": "https://h/2",
            "sha256": "2" * 64,
            "size_bytes": 7,
            "role": "part",
        },
    ]
    a = Artifact.model_validate({"format": "gguf", "files": files})
    assert a.sha256 == tree_digest([(f["name"], f["sha256"]) for f in files])  # type: ignore[misc]
    assert a.size_bytes == 12 and a.primary_file is not None
    assert a.primary_file.name == "m-00001-of-00002.gguf"
    # order in the manifest does not change the digest; a wrong declared digest is refused
    assert Artifact.model_validate({"format": "gguf", "files": files[::-1]}).sha256 == a.sha256
    with pytest.raises(ValueError, match="tree digest"):
        Artifact.model_validate({"format": "gguf", "files": files, "sha256": "3" * 64})
    with pytest.raises(ValueError, match="unique"):
        Artifact.model_validate({"format": "gguf", "files": [files[0], files[0]]})


def test_exported_json_schema_is_up_to_date() -> None:
    on_disk = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    assert on_disk == manifest_json_schema(), (
        "regenerate: python -m locara.registry.manifest > docs/manifest.schema.json"
    )


def test_every_builtin_manifest_validates_against_the_schema() -> None:
    import jsonschema

    schema = manifest_json_schema()
    for p in sorted(builtin_registry_dir().glob("*.json")):
        jsonschema.validate(json.loads(p.read_text()), schema)
        load_manifest(p)


def test_registry_covers_the_categories(settings: Settings) -> None:
    ms = Registry(settings).all()
    modalities = {m.modality for m in ms}
    assert modalities == {"chat", "embedding", "stt", "ocr", "vision"}
    tags = {t for m in ms if m.modality == "chat" for t in m.tags}
    assert {"small", "medium", "large"} <= tags
    # vision artifacts are multi-file: the model and its projector
    vision = [a for m in ms if m.modality == "vision" for _, a in m.all_artifacts()]
    assert vision and all(a.files and any(f.role == "mmproj" for f in a.files) for a in vision)


@pytest.mark.skipif(not FACTS.is_file(), reason="shared/registry-facts.json is not beside the repo")
def test_curated_hashes_come_from_the_sourced_facts(settings: Settings) -> None:
    facts = json.loads(FACTS.read_text())["files"]
    by_sha = {f["sha256"]: f for f in facts if f["sha256"]}
    by_url = {f["url"]: f for f in facts if f.get("url")}
    for m in Registry(settings).all():
        if m.id == "all-minilm-l6-v2":
            continue  # another issue's entry (hash computed from its packaged file)
        for _, art in m.all_artifacts():
            files = art.files or [art]
            for f in files:
                sha = f.sha256
                url = f.url
                if f.sources and all(s.startswith("package://") for s in f.sources):
                    # Bundled in a package, not published with a hash: computed from the
                    # installed file, which must still hash to it.
                    path = local_path(f.sources[0])
                    if path.is_file():
                        assert sha == hashlib.sha256(path.read_bytes()).hexdigest(), path
                    continue
                if sha is None:
                    assert not m.curated, (
                        f"{m.id}: an artifact without a hash must be curated: false"
                    )
                    assert url in by_url and by_url[url]["sha256"] is None
                    continue
                fact = by_sha.get(sha)
                assert fact is not None, f"{m.id}: {sha} is not a sourced hash"
                assert fact["size_bytes"] in (None, f.size_bytes)
                assert url is None or url == fact["url"]


def test_user_registry_path_shadows_builtin(tmp_path: Path) -> None:
    write_manifest(
        tmp_path,
        "smollm2-135m-instruct",
        {"url": "https://h/x.gguf", "sha256": "1" * 64},
        version="9.9.9",
    )
    s = Settings.from_env(
        {"LOCARA_HOME": str(tmp_path / "h"), "LOCARA_REGISTRY_PATH": f"/nonexistent:{tmp_path}"}
    )
    assert Registry(s).get("smollm2-135m-instruct").version == "9.9.9"


def test_unknown_model_suggests_near_matches(settings: Settings) -> None:
    with pytest.raises(UnknownModelError) as err:
        Registry(settings).get("qwen2.5-3b-instrct")
    assert "qwen2.5-3b-instruct" in err.value.suggestions


def test_pull_unknown_id_cli(home: Path) -> None:
    res = run_cli("pull", "qwen2.5-7b", home=home)
    assert (
        res.returncode == 1 and "did you mean" in res.stderr and "qwen2.5-7b-instruct" in res.stderr
    )


def test_pull_of_uncurated_entry_warns_first(home: Path) -> None:
    res = run_cli("pull", "bge-large-en-v1.5", home=home, env={"LOCARA_OFFLINE": "1"})
    assert res.returncode == 1
    warn = res.stderr.index("warning: bge-large-en-v1.5 is not curated")
    assert warn < res.stderr.index("error:")
    assert "offline" in res.stderr


# -- signatures -------------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Settings, Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    home = tmp_path / "home"
    reg = tmp_path / "reg"
    path = write_manifest(
        reg, "signed", {"url": "https://h/x.gguf", "sha256": DEFAULT_SHA, "size_bytes": 5}
    )
    path.write_text(json.dumps(sign_manifest(json.loads(path.read_text()), key)))
    s = Settings.from_env({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(reg)})
    s.trusted_keys_dir.mkdir(parents=True)
    (s.trusted_keys_dir / "team.pub").write_text(public_key_text(key.public_key()))
    return s, path, key


def test_signed_manifest_is_accepted(signed: tuple[Settings, Path, Ed25519PrivateKey]) -> None:
    s, _, _ = signed
    assert Registry(s).get("signed").artifact_list("llama_cpp")[0].sha256 == DEFAULT_SHA


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["artifacts"]["llama_cpp"][0].update(sha256="1" * 64),
        lambda d: d["artifacts"]["llama_cpp"][0].update(url="https://evil.example/x.gguf"),
        lambda d: d.update(license="MIT"),
        lambda d: d.pop("signature"),
        lambda d: d.update(signature="ed25519:0000000000000000:AAAA"),
        lambda d: d.update(signature="rsa:x:y"),
    ],
    ids=["sha256", "url", "license", "unsigned", "unknown-key", "malformed"],
)
def test_tampered_or_unsigned_manifest_is_refused(
    signed: tuple[Settings, Path, Ed25519PrivateKey], tamper: object
) -> None:
    s, path, _ = signed
    data = json.loads(path.read_text())
    tamper(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError) as err:
        Registry(s).get("signed")
    assert "trusted" in (err.value.hint or "")


def test_signature_by_another_key_is_refused(
    signed: tuple[Settings, Path, Ed25519PrivateKey],
) -> None:
    s, path, _ = signed
    data = json.loads(path.read_text())
    path.write_text(json.dumps(sign_manifest(data, Ed25519PrivateKey.generate())))
    with pytest.raises(ManifestError, match="untrusted key"):
        Registry(s).get("signed")


def test_bad_trusted_key_file(signed: tuple[Settings, Path, Ed25519PrivateKey]) -> None:
    s, _, _ = signed
    (s.trusted_keys_dir / "broken.pub").write_text("not base64!")
    with pytest.raises(ManifestError, match="not an ed25519 public key"):
        Registry(s).get("signed")


def test_without_trusted_keys_signatures_are_optional(tmp_path: Path) -> None:
    write_manifest(tmp_path, "plain", {"url": "https://h/x.gguf", "sha256": DEFAULT_SHA})
    s = Settings.from_env(
        {"LOCARA_HOME": str(tmp_path / "h"), "LOCARA_REGISTRY_PATH": str(tmp_path)}
    )
    assert Registry(s).get("plain").signature is None


def test_llama_cpp_has_one_name_and_older_manifests_still_read() -> None:
    from locara.registry.manifest import ModelManifest

    data = json.loads((REPO / "src/locara/registry/models/smollm2-135m-instruct.json").read_text())
    assert "llama_cpp" in data["artifacts"]  # the shipped manifests say it one way
    older = {**data, "artifacts": {"llamacpp": data["artifacts"]["llama_cpp"]}}
    read = ModelManifest.model_validate(older)
    assert list(read.artifacts) == ["llama_cpp"] and read.artifact_list("llama_cpp")
    both = {**data, "artifacts": {"llamacpp": [], "llama_cpp": data["artifacts"]["llama_cpp"]}}
    with pytest.raises(ValueError, match='both "llamacpp" and "llama_cpp"'):
        ModelManifest.model_validate(both)
