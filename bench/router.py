"""A cascade router policy against "always escalate", on prompts with checkable answers.

The local model is the bundled SmolLM2-135M (greedy). The "strong" model is a scripted
OpenAI-compatible server on 127.0.0.1 that returns the answer key — correct by
construction, NOT a model (tests/strong_endpoint.py); so "always escalate" scores 100%
and the question is how much of that a cascade keeps while answering locally.

Signals compared: mean token logprob, tail logprob (the 3 least likely tokens), a
self-check (P("yes") that the answer is right) and self-consistency (3 answers sampled at
temperature 0.8: the share that say the same as the greedy answer, × exp(tail logprob)).

The set, made here (no download): an EASY class (capitals of well-known countries,
opposites of common words) and a HARD class (3-digit × 2-digit products, capitals of
less-known countries). Items are split into dev and test by a hash of the prompt; the
thresholds are chosen on dev only (most answered locally with ≤ 5 points of accuracy
lost) and every number in the table is on test, run end to end through
``locara.router.cascade.run`` and the loopback endpoint. Cost is at the target's list
price (gpt-4o-mini, USD per 1M tokens) for the tokens of each escalated request,
counted by the local tokenizer; local compute is not priced.

    .venv/bin/python bench/router.py
"""

from __future__ import annotations

import hashlib
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from locara.backends.base import Chunk, GenerationRequest, Message, Sampling
from locara.device.profile import current_device
from locara.engine.loader import load, resolve
from locara.router.cascade import (
    SELF_CHECK,
    agreement,
    consistency,
    mean_logprob,
    run,
    tail_logprob,
    yes_probability,
)
from locara.router.decide import Scored, decide
from locara.router.policy import RouterPolicy
from locara.settings import Settings
from strong_endpoint import StrongEndpoint

PRICE = {"input": 0.15, "output": 0.6}  # gpt-4o-mini list price (ledger/prices.json)
MAX_LOSS = 0.05
EASY_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin",
    "Spain": "Madrid", "England": "London", "Russia": "Moscow", "China": "Beijing",
    "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa", "Ireland": "Dublin",
    "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Belgium": "Brussels", "Hungary": "Budapest", "Cuba": "Havana",
    "Thailand": "Bangkok", "Kenya": "Nairobi", "Peru": "Lima", "Portugal": "Lisbon",
    "Poland": "Warsaw", "Mexico": "Mexico City", "Argentina": "Buenos Aires",
    "South Korea": "Seoul", "Iran": "Tehran", "Turkey": "Ankara",
}  # fmt: skip
HARD_CAPITALS = {
    "Burkina Faso": "Ouagadougou", "Kyrgyzstan": "Bishkek", "Bhutan": "Thimphu",
    "Eritrea": "Asmara", "Suriname": "Paramaribo", "Vanuatu": "Port Vila",
    "Tajikistan": "Dushanbe", "Malawi": "Lilongwe", "Lesotho": "Maseru", "Palau": "Ngerulmud",
    "Comoros": "Moroni", "Tuvalu": "Funafuti", "Guyana": "Georgetown", "Benin": "Porto-Novo",
    "Moldova": "Chisinau", "Laos": "Vientiane", "Mongolia": "Ulaanbaatar", "Djibouti": "Djibouti",
    "Brunei": "Bandar Seri Begawan", "Gabon": "Libreville", "Nauru": "Yaren",
    "Kiribati": "Tarawa", "Burundi": "Gitega", "Sao Tome and Principe": "Sao Tome",
    "Liechtenstein": "Vaduz", "Turkmenistan": "Ashgabat", "Belize": "Belmopan",
    "Equatorial Guinea": "Malabo", "Micronesia": "Palikir", "Mauritania": "Nouakchott",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "day": "night", "fast": "slow",
    "happy": "sad", "open": "closed", "light": "dark", "wet": "dry", "early": "late",
    "old": "new", "black": "white", "full": "empty", "hard": "soft", "rich": "poor",
    "top": "bottom", "win": "lose", "buy": "sell", "push": "pull", "true": "false",
    "tall": "short", "thick": "thin", "strong": "weak", "inside": "outside", "left": "right",
    "love": "hate", "young": "old", "clean": "dirty", "heavy": "light", "loud": "quiet",
    "near": "far", "first": "last", "cheap": "expensive", "give": "take", "start": "end",
}  # fmt: skip
COLOURS = {
    "a ripe banana": "yellow", "fresh grass": "green", "snow": "white", "coal": "black",
    "the clear daytime sky": "blue", "a ripe tomato": "red", "a carrot": "orange",
    "milk": "white", "a lemon": "yellow", "a fire truck": "red",
}  # fmt: skip


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str
    kind: str  # easy | hard

    @property
    def split(self) -> str:
        return "dev" if hashlib.sha256(self.prompt.encode()).digest()[0] % 2 == 0 else "test"

    def correct(self, text: str) -> bool:
        return self.answer.lower() in text.lower().replace(",", "")


def items() -> list[Item]:
    out = [Item(f"What is the capital of {c}? Answer with the city name only.", a, "easy")
           for c, a in EASY_CAPITALS.items()]  # fmt: skip
    out += [Item(f"What is the opposite of {w}? Answer with one word.", a, "easy")
            for w, a in OPPOSITES.items()]  # fmt: skip
    out += [Item(f"What colour is {t}? Answer with one word.", a, "easy")
            for t, a in COLOURS.items()]  # fmt: skip
    out += [Item(f"What is the capital of {c}? Answer with the city name only.", a, "hard")
            for c, a in HARD_CAPITALS.items()]  # fmt: skip
    rnd = random.Random(13)
    for _ in range(40):
        a, b = rnd.randint(100, 999), rnd.randint(11, 99)
        out.append(Item(f"What is {a} * {b}? Answer with the number only.", str(a * b), "hard"))
    return out


@dataclass(frozen=True)
class Probe:
    """One item's local answer and its confidence signals (greedy: the same every run)."""

    item: Item
    ok: bool
    mean_lp: float
    tail_lp: float
    yes: float
    cons: float  # self-consistency: agreement of SAMPLES sampled answers × exp(tail)
    cost: float  # what escalating this request costs at the list price


def probe(gen: Callable[[GenerationRequest], list[Chunk]], count: Callable[[str], int],
          it: Item) -> Probe:  # fmt: skip
    plain = GenerationRequest(messages=(Message("user", it.prompt),), max_tokens=16,
                              sampling=Sampling(temperature=0.0, seed=0))  # fmt: skip
    chunks = gen(replace(plain, logprobs=0))
    text = "".join(c.text for c in chunks)
    # The samples the cascade draws for this request: the same seeds, so the same answers.
    samples = ["".join(c.text for c in gen(replace(plain, sampling=replace(
        plain.sampling, temperature=0.8, seed=i + 1)))) for i in range(SAMPLES)]  # fmt: skip
    check = GenerationRequest(
        messages=(Message("user", SELF_CHECK.format(question=it.prompt, answer=text)),),
        max_tokens=1, sampling=Sampling(temperature=0.0, seed=0), logprobs=10,
    )  # fmt: skip
    usage = chunks[-1].usage
    prompt_t = usage.prompt_tokens if usage else count(it.prompt)
    out_t = count(it.answer) + 1
    cost = (prompt_t * PRICE["input"] + out_t * PRICE["output"]) / 1e6
    tail = tail_logprob(chunks)
    return Probe(it, it.correct(text), mean_logprob(chunks) or 0.0, tail or 0.0,
                 yes_probability(gen(check)), consistency(agreement(text, samples), tail),
                 cost)  # fmt: skip


def curve(probes: list[Probe], signal: str, thresholds: list[float]) -> list[dict[str, float]]:
    """Accuracy, local fraction and cost when escalating every probe below a threshold."""
    rows = []
    n = len(probes)
    for t in thresholds:
        esc = [p for p in probes if getattr(p, signal) < t]
        kept = [p for p in probes if getattr(p, signal) >= t]
        rows.append({
            "threshold": t, "accuracy": (len(esc) + sum(p.ok for p in kept)) / n,
            "local": len(kept) / n, "escalations": len(esc), "cost": sum(p.cost for p in esc),
        })  # fmt: skip
    return rows


def best(rows: list[dict[str, float]]) -> dict[str, float]:
    """The threshold answering most locally within MAX_LOSS (always-escalate qualifies)."""
    ok = [r for r in rows if 1.0 - r["accuracy"] <= MAX_LOSS]
    return max(ok, key=lambda r: (r["local"], r["accuracy"]))


def policy_for(url: str, cascade: dict[str, Any], routes: list[dict[str, Any]]) -> RouterPolicy:
    return RouterPolicy.model_validate({
        "name": "bench", "filters": {"privacy": "allow_remote"}, "routes": routes,
        "candidates": [{"model": "smollm2-135m-instruct"}], "cascade": cascade,
        "escalate_to": "strong",
        "targets": [{"name": "strong", "base_url": url, "model": "strong-by-construction",
                     "timeout_s": 10, "require_consent": False, "price": PRICE}],
    })  # fmt: skip


# An intent route: arithmetic goes straight to the strong model, never tried locally.
ARITHMETIC = [{"name": "arithmetic", "keywords": ["*", "multiply", "times"], "mode": "escalate"}]
SIGNALS = {  # probe field -> (policy field, thresholds)
    "mean_lp": ("min_mean_logprob", [round(-2.0 + 0.05 * i, 2) for i in range(41)]),
    "tail_lp": ("min_tail_logprob", [round(-6.0 + 0.25 * i, 2) for i in range(25)]),
    "yes": ("self_check", [round(0.05 * i, 2) for i in range(21)]),
    "cons": ("self_consistency", [round(0.05 * i, 2) for i in range(21)]),
}
SAMPLES = 3  # self-consistency samples (the policy's default)


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="locara-bench-router-"))
    settings = Settings.from_env({"LOCARA_HOME": str(home)})
    handle = load(settings, resolve(settings, None))
    model = handle.model

    def gen(req: GenerationRequest) -> list[Chunk]:
        return list(model.generate(req))

    data = items()
    dev = [it for it in data if it.split == "dev"]
    test = [it for it in data if it.split == "test"]
    print(f"items: {len(data)} ({sum(i.kind == 'easy' for i in data)} easy, "
          f"{sum(i.kind == 'hard' for i in data)} hard); dev {len(dev)}, test {len(test)}")  # fmt: skip
    dev_p = [probe(gen, model.count_tokens, it) for it in dev]
    picks: dict[str, dict[str, Any]] = {}
    for sig, (field, ts) in SIGNALS.items():
        pick = best(curve(dev_p, sig, ts))
        t = pick["threshold"]
        picks[sig] = {
            "self_check": {"self_check": {"min_yes_prob": t}},
            "self_consistency": {"self_consistency": {"min_confidence": t, "samples": SAMPLES}},
        }.get(field, {field: t})
        print(f"chosen on dev: {field} {t} (dev: {pick['local']:.0%} local, "
              f"accuracy {pick['accuracy']:.1%})")  # fmt: skip
    dev_arith = [p for p in dev_p if not any(k in p.item.prompt for k in ("*",))]
    n_arith = len(dev_p) - len(dev_arith)

    def best_with_route(sig: str) -> dict[str, Any]:
        # Arithmetic is escalated by the route (counted right); the rest by the signal.
        rows = curve(dev_arith, sig, SIGNALS[sig][1])
        n = len(dev_p)
        scaled = [{**r, "accuracy": (r["accuracy"] * len(dev_arith) + n_arith) / n,
                   "local": r["local"] * len(dev_arith) / n} for r in rows]  # fmt: skip
        t = best(scaled)["threshold"]
        if sig == "cons":
            return {"self_consistency": {"min_confidence": t, "samples": SAMPLES}}
        return {SIGNALS[sig][0]: t}

    # Test, end to end: the policy, the cascade, HTTP to the scripted strong endpoint.
    device = current_device(settings)
    key = {it.prompt: it.answer for it in data}
    test_p = [probe(gen, model.count_tokens, it) for it in test]
    cost_of = {p.item.prompt: p.cost for p in test_p}
    always = sum(cost_of.values())
    local_right = sum(p.ok for p in test_p)

    def cascade_row(
        name: str, cascade: dict[str, Any], routes: list[dict[str, Any]]
    ) -> dict[str, Any]:
        with StrongEndpoint(key) as strong:
            pol = policy_for(strong.url, cascade, routes)
            right = esc = 0
            cost = 0.0
            for it in test:
                d = decide(pol, it.prompt, device, settings)
                req = GenerationRequest(messages=(Message("user", it.prompt),), max_tokens=16,
                                        sampling=Sampling(temperature=0.0, seed=0))  # fmt: skip

                def g(s: Scored, r: GenerationRequest) -> list[Chunk]:
                    return gen(r)

                out = run(pol, d, req, g, consent=True)
                right += it.correct(out.text)
                if out.escalated:
                    esc += 1
                    cost += cost_of[it.prompt]
        n = len(test)
        what = ", ".join(f"{k} {v}" for k, v in cascade.items())
        return {"policy": f"{name}: {what}", "accuracy": right / n, "local": 1 - esc / n,
                "escalations": esc, "cost": cost}  # fmt: skip

    n = len(test)
    oracle_cost = sum(p.cost for p in test_p if not p.ok)
    rows = [
        {"policy": "always escalate", "accuracy": 1.0, "local": 0.0, "escalations": n, "cost": always},
        {"policy": "always local", "accuracy": local_right / n, "local": 1.0, "escalations": 0, "cost": 0.0},
        {"policy": "oracle (escalates exactly the wrong)", "accuracy": 1.0, "local": local_right / n,
         "escalations": n - local_right, "cost": oracle_cost},
        *(cascade_row("cascade", picks[sig], []) for sig in SIGNALS),
        cascade_row("arithmetic route + cascade", best_with_route("tail_lp"), ARITHMETIC),
        cascade_row("arithmetic route + cascade", best_with_route("cons"), ARITHMETIC),
    ]  # fmt: skip
    print(
        f"\ntest set ({n} prompts), end to end; the strong endpoint is scripted (correct by construction):"
    )
    print(
        f"{'policy':76} {'accuracy':>8} {'loss':>6} {'local':>6} {'escal.':>6} {'cost $':>9} {'vs always':>9}"
    )
    for r in rows:
        print(f"{r['policy']:76} {r['accuracy']:>8.1%} {1 - r['accuracy']:>6.1%} {r['local']:>6.0%} "
              f"{r['escalations']:>6} {r['cost']:>9.6f} {r['cost'] / always:>9.0%}")  # fmt: skip
    for kind in ("easy", "hard"):
        ps = [p for p in test_p if p.item.kind == kind]
        print(f"  {kind}: {len(ps)} prompts, the local model is right on {sum(p.ok for p in ps)}")
    for sig, (field, ts) in SIGNALS.items():
        print(f"\ncurve over {field} (test, from the same greedy answers):")
        print(f"{'threshold':>9} {'accuracy':>9} {'local':>6} {'escal.':>6} {'cost vs always':>14}")
        for r in curve(test_p, sig, ts)[:: max(1, len(ts) // 12)]:
            print(f"{r['threshold']:>9} {r['accuracy']:>9.1%} {r['local']:>6.0%} "
                  f"{r['escalations']:>6} {r['cost'] / always:>14.0%}")  # fmt: skip
    handle.close()


if __name__ == "__main__":
    main()
