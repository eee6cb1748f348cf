"""Router policies: validation, decisions on synthetic devices, the cascade with the real
SmolLM2 and a loopback "strong" endpoint (scripted: correct by construction), failures of
the target, consent, the local_only egress guard, keys that never leak, ledger rows."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import run_cli
from locara.backends.base import Chunk, GenerationRequest, Message, Sampling
from locara.device.profile import detect_profile
from locara.engine.loader import ModelHandle, load, resolve
from locara.errors import ConfigError, UsageError
from locara.ledger.db import UsageDB
from locara.router.cascade import agreement, consistency, run
from locara.router.decide import PolicyRouter, Scored, decide
from locara.router.policy import RouterPolicy, json_schema, load_policy, parse_policy
from locara.settings import Settings
from server_harness import RunningServer, clone_home, metric, running_server, wait_until
from strong_endpoint import StrongEndpoint

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
SECRET = "sk-test-SECRET-value-4242"
QUESTION = "What is the capital of France? Answer with one word."
KEY = {QUESTION: "Paris"}


def policy_dict(url: str = "http://127.0.0.1:9/v1", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "smart",
        "filters": {"privacy": "allow_remote"},
        "candidates": [{"model": "smollm2-135m-instruct", "name": "small"}],
        "cascade": {"min_mean_logprob": -0.5},
        "escalate_to": "strong",
        "targets": [{"name": "strong", "base_url": url, "model": "strong-1", "timeout_s": 2,
                     "price": {"input": 1.0, "output": 2.0}}],
    }  # fmt: skip
    data.update(over)
    return data


def policy(url: str = "http://127.0.0.1:9/v1", **over: Any) -> RouterPolicy:
    return RouterPolicy.model_validate(policy_dict(url, **over))


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "colour: unknown field"),
        ({"cascade": {"min_mean_logprob": 0.5}}, "cascade.min_mean_logprob: Input should be less than or equal to 0"),
        ({"cascade": {"self_check": {"min_yes_prob": 1.5}}}, "min_yes_prob: Input should be less than or equal to 1"),
        ({"routes": [{"name": "r", "min_similarity": -0.1}]}, "routes.0.min_similarity"),
        ({"cascade": {"self_consistency": {"min_confidence": 1.2}}}, "self_consistency.min_confidence: Input should be less than or equal to 1"),
        ({"cascade": {"self_consistency": {"min_confidence": 0.5, "samples": 0}}}, "self_consistency.samples: Input should be greater than or equal to 1"),
        ({"cascade": {"self_consistency": {"samples": 3}}}, "self_consistency.min_confidence: Field required"),
        ({"candidates": []}, "candidates: Tuple should have at least 1 item"),
        ({"escalate_to": "nowhere"}, "escalate_to names the target 'nowhere', which is not defined"),
        ({"routes": [{"name": "r", "candidates": ["big"]}]}, "route 'r' names the candidate 'big'"),
        ({"filters": {"privacy": "local_only"}}, "a local_only policy cannot name escalation targets"),
        (
            {"targets": [
                {"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m", "fallback": "b"},
                {"name": "b", "base_url": "http://127.0.0.1:2/v1", "model": "m", "fallback": "a"},
            ], "escalate_to": "a"},
            "fallback cycle: a -> b -> a",
        ),
        ({"targets": [{"name": "strong", "base_url": "ftp://x", "model": "m"}]}, "targets.0.base_url"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_in_one_line(change: dict[str, Any], message: str) -> None:
    data = {**policy_dict(), **change}
    with pytest.raises(ConfigError) as err:
        parse_policy(json.dumps(data), "p.json")
    assert message in err.value.message
    assert "\n" not in err.value.message
    assert err.value.hint and "router-policy.schema.json" in err.value.hint


def test_unknown_candidate_and_missing_key_variable(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy_dict(candidates=[{"model": "smollm2-135m-instruc"}])))
    with pytest.raises(ConfigError, match="is not a known model") as err:
        load_policy(path, settings)
    assert "smollm2-135m-instruct" in (err.value.hint or "")  # the near match
    target = {"name": "strong", "base_url": "http://127.0.0.1:9/v1", "model": "m",
              "api_key_env": "LOCARA_TEST_KEY"}  # fmt: skip
    path.write_text(json.dumps(policy_dict(targets=[target])))
    with pytest.raises(
        ConfigError, match="reads its API key from LOCARA_TEST_KEY, which is not set"
    ):
        load_policy(path, settings, env={})
    assert load_policy(path, settings, env={"LOCARA_TEST_KEY": SECRET}).targets[0].api_key_env
    cand = {"model": "smollm2-135m-instruct", "adapters": [{"id": "no-such-adapter"}]}
    path.write_text(json.dumps(policy_dict(candidates=[cand])))
    with pytest.raises(ConfigError, match=r"candidates\.0\.adapters\.0: .*no-such-adapter"):
        load_policy(path, settings)


def test_toml_policy_and_cli_check(shared_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'name = "smart"\n[[candidates]]\nmodel = "smollm2-135m-instruct"\n'
        '[[routes]]\nname = "math"\nkeywords = ["multiply"]\nmode = "local"\n'
    )
    res = run_cli("route", "check", str(path), home=shared_home)
    assert res.returncode == 0, res.stderr
    assert (
        "policy smart is valid (1 candidates, 1 routes, 0 targets, privacy local_only)"
        in res.stdout
    )
    path.write_text('name = "smart"\nunknown_thing = 1\n[[candidates]]\nmodel = "x"\n')
    res = run_cli("route", "check", str(path), home=shared_home)
    assert res.returncode != 0
    assert "unknown_thing: unknown field" in res.stderr


def test_schema_in_docs_is_current() -> None:
    assert (REPO / "docs/router-policy.schema.json").read_text() == json_schema(), (
        "regenerate: python -m locara.router.policy > docs/router-policy.schema.json"
    )


# -- decisions -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router_home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("router-home")
    s = Settings.from_env({"LOCARA_HOME": str(home)})
    resolve(s, None)
    return s


def test_decisions_on_synthetic_devices(router_home: Settings) -> None:
    roomy = dataclasses.replace(detect_profile(router_home), ram_available_bytes=16 * 2**30)
    tiny = dataclasses.replace(roomy, ram_available_bytes=32 * 2**20, ram_total_bytes=64 * 2**20)
    p = policy(routes=[{"name": "math", "keywords": ["multiply"], "mode": "escalate"}])
    d = decide(p, "please multiply 3 by 4", roomy, router_home)
    assert (d.mode, d.route_name, d.match.how) == ("escalate", "math", "keyword")
    d = decide(p, QUESTION, roomy, router_home)
    assert d.mode == "cascade" and d.chosen is not None and d.chosen.candidate.key == "small"
    assert d.chosen.terms["utility"] == 0.5 and "no scorecard" in d.chosen.reasons[0]
    assert [t.name for t in d.targets] == ["strong"]
    # Nothing fits: the no-op-or-escalation plan, with the reasons, never a crash.
    d = decide(p, QUESTION, tiny, router_home)
    assert d.mode == "escalate" and d.chosen is None
    assert "no local candidate fits" in d.reasons[-1] and "small" in d.reasons[-1]
    d = decide(policy(on_no_candidate="refuse"), QUESTION, tiny, router_home)
    assert d.mode == "refuse" and "no-op plan" in d.reasons[-1]
    with pytest.raises(UsageError, match="no local candidate can answer"):
        run(
            policy(on_no_candidate="refuse"),
            d,
            GenerationRequest(prompt="x"),
            _no_gen,
            consent=True,
        )
    # max_memory and runtime filters
    d = decide(
        policy(filters={"privacy": "allow_remote", "max_memory": 1024}),
        QUESTION,
        roomy,
        router_home,
    )
    assert d.mode == "escalate" and "max_memory" in d.ranked[0].reasons[0]
    d = decide(
        policy(filters={"privacy": "allow_remote", "runtime": ["mlx"]}),
        QUESTION,
        roomy,
        router_home,
    )
    assert "runtime llama_cpp not in" in d.ranked[0].reasons[0]


def _no_gen(scored: Scored, req: GenerationRequest) -> list[Chunk]:
    raise AssertionError("nothing should be generated")


def test_route_explain_cli_with_a_device_file(shared_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy_dict()))
    dev = dataclasses.replace(
        detect_profile(Settings.from_env({"LOCARA_HOME": str(shared_home)})),
        ram_available_bytes=32 * 2**20,
    )
    device = tmp_path / "tiny.json"
    device.write_text(dev.to_json())
    res = run_cli("route", "explain", str(path), QUESTION, "--device", str(device), "--json",
                  home=shared_home)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["mode"] == "escalate" and out["chosen"] is None
    assert out["escalation"][0]["target"] == "strong"
    res = run_cli("route", "explain", str(path), QUESTION, home=shared_home)
    assert "mode       cascade" in res.stdout and "escalate to strong" in res.stdout


def test_embedding_routes_with_all_minilm(router_home: Settings) -> None:
    p = policy(routes=[
        {"name": "geo", "examples": ["What is the capital of Italy?", "Which country is Lyon in?"],
         "min_similarity": 0.5, "mode": "local"},
        {"name": "code", "examples": ["Write a Python function that reverses a list"], "min_similarity": 0.4},
    ])  # fmt: skip
    router = PolicyRouter(p, router_home, detect_profile(router_home))
    try:
        geo = router.decide("What is the capital of Spain?")
        code = router.decide("Write a JavaScript function that reverses a string")
        none = router.decide("zzzz qqqq")
    finally:
        router.close()
    assert (geo.route_name, geo.match.how, geo.mode) == ("geo", "embedding", "local")
    assert geo.match.similarity is not None and geo.match.similarity >= 0.5
    assert code.route_name == "code"
    assert none.match.how == "none" and none.mode == "cascade"


# -- the cascade with the real model ---------------------------------------------------


@pytest.fixture(scope="module")
def small(router_home: Settings) -> Iterator[ModelHandle]:
    handle = load(router_home, resolve(router_home, None))
    yield handle
    handle.close()


@pytest.fixture
def strong() -> Iterator[StrongEndpoint]:
    with StrongEndpoint(KEY) as s:
        yield s


def _generate(handle: ModelHandle) -> Any:
    def gen(scored: Scored, req: GenerationRequest) -> list[Chunk]:
        return list(handle.model.generate(req))

    return gen


def _req() -> GenerationRequest:
    return GenerationRequest(messages=(Message("user", QUESTION),), max_tokens=12,
                             sampling=Sampling(temperature=0.0, seed=0))  # fmt: skip


def test_agreement_compares_words_not_spelling() -> None:
    said = ["the capital is PARIS", "Paris.", "The capital is Paris!"]
    assert agreement("The capital is Paris.", said) == pytest.approx(2 / 3)
    assert agreement("Paris", []) == 0.0
    assert consistency(0.5, math.log(0.5)) == pytest.approx(0.25)
    assert consistency(1.0, None) == 0.0  # no tokens: nothing to be confident about


def _decide(p: RouterPolicy, s: Settings) -> Any:
    return decide(p, QUESTION, detect_profile(s), s)


def test_self_consistency_samples_the_local_model_and_multiplies_by_the_tail(
    router_home: Settings, small: ModelHandle, strong: StrongEndpoint
) -> None:
    seen: list[GenerationRequest] = []
    gen = _generate(small)

    def recording(scored: Scored, r: GenerationRequest) -> list[Chunk]:
        seen.append(r)
        return gen(scored, r)

    p = policy(strong.url, cascade={"self_consistency": {"min_confidence": 0.0, "samples": 3}})
    out = run(p, _decide(p, router_home), _req(), recording, consent=True)
    assert not out.escalated and not strong.requests  # 0 is always met: kept
    # The answer (greedy, with logprobs for the tail), then 3 seeded samples at 0.8.
    assert [(r.sampling.temperature, r.sampling.seed) for r in seen] == [
        (0.0, 0), (0.8, 1), (0.8, 2), (0.8, 3)
    ]  # fmt: skip
    assert seen[0].logprobs == 0
    sig = out.signals
    assert sig.agreement is not None and sig.agreement in (0.0, 1 / 3, 2 / 3, 1.0)
    assert sig.tail_logprob is not None and sig.confidence is not None
    assert sig.confidence == pytest.approx(sig.agreement * math.exp(sig.tail_logprob))
    again = run(p, _decide(p, router_home), _req(), gen, consent=True)
    assert again.signals == sig  # seeded samples: the same request, the same decision
    # A confidence demanded above what the answer has escalates, with the numbers.
    p = policy(strong.url, cascade={"self_consistency": {"min_confidence": 1.0}})
    out = run(p, _decide(p, router_home), _req(), gen, consent=True)
    assert out.escalated and out.text == "Paris"
    assert out.reason == (
        f"self-consistency {sig.confidence:.2f} < 1.0 ({sig.agreement:.0%} of 3 samples agree)"
    )


def test_cascade_escalates_on_low_confidence(
    router_home: Settings, small: ModelHandle, strong: StrongEndpoint
) -> None:
    # Any answer's mean logprob is below -0.0001: the cascade must escalate.
    p = policy(strong.url, cascade={"min_mean_logprob": -0.0001})
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True)
    assert out.escalated and out.answered_by == "remote" and out.text == "Paris"
    assert out.reason and out.reason.startswith("mean token logprob")
    assert out.signals.mean_logprob is not None and out.signals.mean_logprob < -0.0001
    assert out.remote is not None and out.remote.cost_usd is not None and out.remote.cost_usd > 0
    assert strong.requests[0]["body"]["messages"][-1]["content"] == QUESTION
    p = policy(strong.url, cascade={"min_tail_logprob": -0.0001})
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True)
    assert out.escalated and out.reason and out.reason.startswith("tail logprob")
    assert out.signals.tail_logprob is not None
    assert out.signals.mean_logprob is not None
    assert out.signals.tail_logprob <= out.signals.mean_logprob
    # A lenient threshold keeps the local answer and never calls the target.
    p = policy(strong.url, cascade={"min_mean_logprob": -100})
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True)
    assert not out.escalated and out.answered_by == "local" and len(strong.requests) == 2


def test_json_schema_failure_and_self_check_escalate(
    router_home: Settings, small: ModelHandle, strong: StrongEndpoint
) -> None:
    p = policy(strong.url, cascade={"json_schema": True})
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True)
    assert not out.escalated  # no schema asked for: no schema signal
    # The local answer is checked against the schema; plain text fails it.
    req = dataclasses.replace(_req(), json_schema=schema)
    gen = _generate(small)

    def unconstrained(scored: Scored, r: GenerationRequest) -> list[Chunk]:
        return gen(scored, dataclasses.replace(r, json_schema=None))

    out = run(p, _decide(p, router_home), req, unconstrained, consent=True)
    assert out.escalated and out.reason == "the answer fails the request's JSON schema"
    assert out.signals.schema_ok is False
    p = policy(strong.url, cascade={"self_check": {"min_yes_prob": 1.0}})
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True)
    assert out.escalated and out.reason and out.reason.startswith("self-check P(yes)")
    assert out.signals.yes_prob is not None and 0.0 <= out.signals.yes_prob < 1.0


@pytest.mark.parametrize("mode", ["500", "garbage", "slow", "hang", "down"])
def test_failing_target_falls_back_then_keeps_the_local_answer(
    mode: str, router_home: Settings, small: ModelHandle, strong: StrongEndpoint
) -> None:
    with StrongEndpoint(KEY) as backup:
        url = "http://127.0.0.1:9/v1" if mode == "down" else strong.url
        strong.mode = mode
        targets = [
            {"name": "strong", "base_url": url, "model": "m", "timeout_s": 1.5,
             "fallback": "backup", "api_key_env": "ROUTER_TEST_KEY"},
            {"name": "backup", "base_url": backup.url, "model": "m", "timeout_s": 1.5},
        ]  # fmt: skip
        p = policy(targets=targets, cascade={"min_mean_logprob": -0.0001})
        env = {"ROUTER_TEST_KEY": SECRET}
        out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True, env=env)
        assert out.answered_by == "remote" and out.remote is not None
        assert out.remote.target.name == "backup" and out.text == "Paris"
        want = {"500": "HTTP 500", "garbage": "not an OpenAI chat completion", "slow": "timed out",
                "hang": "timed out", "down": "ConnectError"}[mode]  # fmt: skip
        assert want in out.remote.failures[0]
        assert SECRET not in repr(out)
        # The backup down too: the local answer stands, with both reasons.
        backup.mode = "500"
        out = run(p, _decide(p, router_home), _req(), _generate(small), consent=True, env=env)
        assert out.answered_by == "local" and not out.escalated
        assert out.reason and want in out.reason and "backup: HTTP 500" in out.reason
        assert SECRET not in out.reason
    if mode != "down":  # the key went only into the Authorization header
        assert strong.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_consent_is_required_before_anything_leaves(
    router_home: Settings, small: ModelHandle, strong: StrongEndpoint
) -> None:
    p = policy(strong.url, cascade={"min_mean_logprob": -0.0001})
    out = run(p, _decide(p, router_home), _req(), _generate(small), consent=False)
    assert out.answered_by == "local" and not out.escalated
    assert out.reason and "requires consent (X-Locara-Consent: remote)" in out.reason
    assert strong.requests == []


def test_local_only_opens_no_socket_to_the_target(
    router_home: Settings,
    small: ModelHandle,
    strong: StrongEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connects: list[Any] = []
    real = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        connects.append(address)
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    data = policy_dict(strong.url, cascade={"min_mean_logprob": -0.0001})
    data["filters"] = {"privacy": "local_only"}
    del data["targets"], data["escalate_to"]
    p = RouterPolicy.model_validate(data)
    d = _decide(p, router_home)
    assert d.targets == () and "privacy local_only" in " ".join(d.reasons)
    out = run(p, d, _req(), _generate(small), consent=True)
    assert out.answered_by == "local" and not out.escalated
    assert strong.requests == []
    assert not [a for a in connects if isinstance(a, tuple) and a[1] == strong.port]


# -- the server: serve --policy, the egress guard, ledger rows ---------------------------


def _chat(url: str, headers: dict[str, str] | None = None, model: str = "auto") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": QUESTION}],
              "max_tokens": 12, "temperature": 0, "seed": 0},
        headers=headers or {}, timeout=120,
    )  # fmt: skip


def test_served_policy_escalates_with_consent_and_records_it(
    shared_home: Path, tmp_path: Path
) -> None:

    home = clone_home(shared_home, tmp_path / "home")
    egress = tmp_path / "egress.log"
    egress.touch()
    with StrongEndpoint(KEY) as strong:
        path = tmp_path / "p.json"
        target = {"name": "strong", "base_url": strong.url, "model": "strong-1", "timeout_s": 5,
                  "api_key_env": "ROUTER_TEST_KEY", "price": {"input": 1.0, "output": 2.0}}  # fmt: skip
        # Every answer's confidence is < 1: each request samples twice, then escalates.
        cascade = {"self_consistency": {"min_confidence": 1.0, "samples": 2}}
        path.write_text(json.dumps(policy_dict(targets=[target], cascade=cascade)))
        env = {"ROUTER_TEST_KEY": SECRET, "EGRESS_LOG": str(egress)}
        with running_server(home, env, args=["--policy", str(path)],
                            launcher=[str(REPO / "tests/egress_guard.py")]) as srv:  # fmt: skip
            r = _chat(srv.url)  # no consent: the local answer, with the reason
            assert r.status_code == 200, r.text
            assert r.headers["X-Locara-Answered-By"] == "local"
            assert "requires consent" in r.json()["locara"]["reason"]
            signals = r.json()["locara"]["signals"]  # every signal the cascade read, reported
            assert signals["tail_logprob"] <= signals["mean_logprob"] < 0
            assert signals["confidence"] == pytest.approx(
                signals["agreement"] * math.exp(signals["tail_logprob"])
            )
            r = _chat(srv.url, {"X-Locara-Consent": "remote"}, model="smart")
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Paris"
            assert r.headers["X-Locara-Answered-By"] == "remote:strong"
            assert r.headers["X-Locara-Route"] == "smart/(default)"
            strong.mode = "500"  # every target down: the local answer stands
            r = _chat(srv.url, {"X-Locara-Consent": "remote"})
            assert r.status_code == 200 and "strong: HTTP 500" in r.json()["locara"]["reason"]
            log = srv.log_text()
        rows = UsageDB(home / "usage.db").rows()
    assert SECRET not in log and SECRET not in json.dumps(rows)
    assert egress.read_text() == ""  # nothing but loopback was ever connected to
    routed = [r for r in rows if r["route"]]
    remote = [r for r in routed if r["backend"] == "remote:strong"]
    assert len(remote) == 1 and remote[0]["escalated"] == 1 and remote[0]["cost_usd"] > 0
    assert remote[0]["route_reason"].startswith("self-consistency")
    local = [r for r in routed if r["backend"] == "llama_cpp"]
    checks = [r for r in local if r["extra"].get("route_check")]
    answers = [r for r in local if r not in checks]
    assert len(answers) == 3 and len(checks) == 6  # 2 samples per request: not requests
    assert {r["route"] for r in local} == {"smart/(default)"}
    assert sum(r["escalated"] for r in answers) == 1  # the attempt that was escalated
    kept = [r for r in answers if not r["escalated"]]
    assert all(r["saved_usd"] > 0 for r in kept)  # the saving is the answer's, once
    assert all(r["saved_usd"] is None for r in checks)
    res = run_cli("usage", home=home)
    assert "Routed by policy: 3 requests, 2 answered locally, 1 escalated" in res.stdout, res.stdout


def test_served_local_only_policy_never_connects_off_loopback(
    shared_home: Path, tmp_path: Path
) -> None:

    home = clone_home(shared_home, tmp_path / "home")
    egress = tmp_path / "egress.log"
    egress.touch()
    data = policy_dict(cascade={"min_mean_logprob": -0.0001})
    data["filters"] = {"privacy": "local_only"}
    del data["targets"], data["escalate_to"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with running_server(home, {"EGRESS_LOG": str(egress)}, args=["--policy", str(path)],
                        launcher=[str(REPO / "tests/egress_guard.py")]) as srv:  # fmt: skip
        r = _chat(srv.url, {"X-Locara-Consent": "remote"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Locara-Answered-By"] == "local"
        assert r.json()["locara"]["escalated"] is False
        r = httpx.post(f"{srv.url}/api/chat", timeout=120, json={
            "model": "smart", "stream": False, "options": {"temperature": 0, "num_predict": 12},
            "messages": [{"role": "user", "content": QUESTION}],
        })  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True and "Paris" in r.json()["message"]["content"]
        assert r.json()["locara"]["answered_by"] == "local"
        lines = httpx.post(f"{srv.url}/api/chat", timeout=120, json={
            "model": "auto", "messages": [{"role": "user", "content": QUESTION}],
            "options": {"num_predict": 4},
        }).text.splitlines()  # fmt: skip
        assert json.loads(lines[-1])["done"] is True and len(lines) == 2
        # A non-routed model name is served as before.
        plain = _chat(srv.url, model="smollm2-135m-instruct")
        assert plain.status_code == 200 and "locara" not in plain.json()
    assert egress.read_text() == ""
    rows = [r for r in UsageDB(home / "usage.db").rows() if r["route"]]
    assert len(rows) == 3 and {r["surface"] for r in rows} == {"openai", "ollama"}
    assert all(r["escalated"] == 0 and r["saved_usd"] is None for r in rows)


def test_serve_refuses_a_bad_policy_before_listening(shared_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy_dict(targets=[
        {"name": "strong", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "NOPE_KEY"}
    ])))  # fmt: skip
    res = run_cli("serve", "--port", "1", "--policy", str(path), home=shared_home, timeout=60)
    assert res.returncode != 0
    assert "reads its API key from NOPE_KEY, which is not set" in res.stderr


def test_the_egress_guard_refuses_before_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import egress_guard

    log = tmp_path / "egress.log"
    monkeypatch.setenv("EGRESS_LOG", str(log))
    egress_guard._hook("socket.connect", (None, ("127.0.0.1", 80)))
    egress_guard._hook("socket.connect", (None, "/run/worker.sock"))
    with pytest.raises(PermissionError, match=r"192\.0\.2\.1"):  # TEST-NET-1: never reached
        egress_guard._hook("socket.connect", (None, ("192.0.2.1", 443)))
    with pytest.raises(PermissionError, match=r"api\.example\.com"):
        egress_guard._hook("socket.getaddrinfo", ("api.example.com", 443, 0, 0, 0))
    assert log.read_text().splitlines() == [
        "socket.connect 192.0.2.1",
        "socket.getaddrinfo api.example.com",
    ]


# -- routed requests are served like any other (Service.start) -----------------------------

LONG_SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 300}
LONG_TOKENS = 450  # of a 512 context; the schema needs ~1200 to finish: generating till then


@pytest.fixture(scope="module")
def routed_server(
    shared_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server with a local_only policy, one slot per model and no queue."""
    home = clone_home(shared_home, tmp_path_factory.mktemp("routed") / "home")
    data = policy_dict()
    data["filters"] = {"privacy": "local_only"}
    del data["targets"], data["escalate_to"]
    path = home.parent / "p.json"
    path.write_text(json.dumps(data))
    env = {"LOCARA_QUEUE_DEPTH": "0", "LOCARA_NUM_PARALLEL": "1", "LOCARA_CTX": "512"}
    with running_server(home, env, args=["--policy", str(path)]) as srv:
        yield srv


def _long(stream: bool, model: str = "auto") -> dict[str, Any]:
    return {
        "model": model, "messages": [{"role": "user", "content": "List numbers."}],
        "max_tokens": LONG_TOKENS, "stream": stream,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "numbers", "schema": LONG_SCHEMA}},
    }  # fmt: skip


def _requests(srv: RunningServer, status: str, surface: str = "openai") -> float:
    text = httpx.get(f"{srv.url}/metrics").text
    return metric(text, "locara_requests_total", surface=surface, model=MODEL, status=status)


def _idle(srv: RunningServer) -> bool:
    text = httpx.get(f"{srv.url}/metrics").text
    return metric(text, "locara_in_flight_requests", model=MODEL, mode="generation") == 0


def test_a_routed_request_is_queued_and_counted_like_any_other(
    routed_server: RunningServer,
) -> None:
    srv = routed_server
    ok, busy = _requests(srv, "ok"), _requests(srv, "error")
    r = _chat(srv.url)
    assert r.status_code == 200 and r.headers["X-Locara-Answered-By"] == "local", r.text
    assert _requests(srv, "ok") == ok + 1
    # The model's one slot is taken by a plain request: a routed one waits in the same
    # queue (of depth 0 here), so it is refused as any other would be, and counted.
    url = f"{srv.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=_long(True, MODEL), timeout=120) as plain:
        lines = (ln for ln in plain.iter_lines() if ln.startswith("data: {"))
        next(lines), next(lines)  # the model is generating now
        r = _chat(srv.url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full", r.text
        assert _requests(srv, "error") == busy + 1
    assert wait_until(lambda: _idle(srv))
    rows = [r for r in UsageDB(srv.home / "usage.db").rows() if r["route"]]
    assert [r["status"] for r in rows] == ["ok"] and rows[0]["route"] == "smart/(default)"


def test_a_routed_stream_whose_client_leaves_is_cancelled(routed_server: RunningServer) -> None:
    srv = routed_server
    assert _chat(srv.url).status_code == 200  # loaded: the next request starts generating
    assert wait_until(lambda: _idle(srv))
    cancelled = _requests(srv, "cancelled")
    url = f"{srv.url}/v1/chat/completions"
    # A routed stream sends its answer once the cascade has judged it: the client sees
    # nothing for a while, gives up, and the generation stops for nobody.
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("POST", url, json=_long(True), timeout=1.5) as r,
    ):
        for _ in r.iter_lines():
            pass
    assert wait_until(lambda: _idle(srv)), "the generation kept the model busy"

    def cancelled_rows() -> list[dict[str, Any]]:
        rows = UsageDB(srv.home / "usage.db").rows()
        return [r for r in rows if r["route"] and r["status"] == "cancelled"]

    assert wait_until(lambda: cancelled_rows())
    [row] = cancelled_rows()
    assert row["completion_tokens"] < LONG_TOKENS and row["escalated"] == 0
    assert "client closed the connection" in row["route_reason"]
    assert _requests(srv, "cancelled") == cancelled + 1
