"""Release packets: a copyable release note, a CycloneDX 1.6 ML-BOM, an SPDX 3.0.1 document
with an AIPackage, and the FitnessVectors — every digest one the store can verify.

The evidence is the candidate's scorecard beside its parent's (the base alone for an
adapter, the lineage parent for a merged model) on the same suite. cyclonedx-python-lib
builds the BOM but does not emit ``modelCard``; that JSON is written here, and the whole
BOM is then validated against the 1.6 schema the library bundles.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.cli.common import human_size
from locara.ecology.adapters import AdapterRegistry
from locara.ecology.evaluate import parse_candidate
from locara.ecology.fitness import FitnessDB, FitnessVector
from locara.ecology.lineage import ancestry
from locara.errors import LocaraError, UsageError
from locara.settings import Settings
from locara.store.blobs import BlobStore

BOM = "bom.cdx.json"
SPDX = "spdx.json"
NOTE = "RELEASE.md"
FITNESS = "fitness.json"


class NoScorecardError(UsageError):
    """A release asked for a candidate that was never evaluated."""


@dataclass(frozen=True)
class Candidate:
    label: str
    model_id: str
    version: str
    license: str
    base_sha256: str
    base_size: int
    adapters: list[dict[str, Any]]  # id, sha256, scale, size_bytes, license
    vector: FitnessVector
    parent: FitnessVector | None


def _find(settings: Settings, candidate: str) -> Candidate:
    from locara.ecology.adapters import resolve_base
    from locara.registry.catalog import Registry

    model_ref, specs = parse_candidate(candidate)
    base = resolve_base(settings, model_ref)
    registry = AdapterRegistry(settings)
    wanted = [(s.id, s.scale) for s in specs]
    runs = FitnessDB(settings).for_base(base.sha256)
    mine = [v for v in runs if [(a["id"], a["scale"]) for a in v.adapters] == wanted]
    if not mine:
        raise NoScorecardError(
            f"{candidate} has no scorecard: a release needs evidence",
            f"evaluate it first: locara eval {candidate}",
        )
    vec = mine[0]
    # The parent: the base alone for an adapter; the lineage parent for a derived model.
    parent_shas: list[str] = []
    if specs:
        parent_shas = [base.sha256]
    else:
        rec = next(iter(ancestry(settings, base.sha256)), None)
        parent_shas = list(rec.parents) if rec else []
    parent = None
    for sha in parent_shas:
        for v in FitnessDB(settings).for_base(sha):
            if not v.adapters and v.suite_sha256 == vec.suite_sha256:
                parent = v
                break
    manifest = Registry(settings).get(base.model_id or model_ref)
    adapters = []
    for a in vec.adapters:
        m = registry.get(a["id"])
        adapters.append({**a, "size_bytes": m.files[0].size_bytes, "license": m.license,
                         "task": m.task, "training_data": m.training_data})  # fmt: skip
    return Candidate(
        vec.candidate,
        manifest.id,
        manifest.version,
        manifest.license,
        base.sha256,
        vec.size["model_size"],
        adapters,
        vec,
        parent,
    )


def _digests(settings: Settings, cand: Candidate) -> dict[str, str]:
    """Every artifact digest the packet names -> what it is; each verified in the store."""
    out = {cand.base_sha256: f"{cand.model_id} (base)"}
    out.update({a["sha256"]: f"adapter {a['id']}" for a in cand.adapters})
    out[cand.vector.suite_sha256] = f"task suite {cand.vector.suite}"
    store = BlobStore(settings)
    for rec in ancestry(settings, cand.base_sha256):
        # Ancestors outside the store (the PEFT weights an adapter came from) stay in the
        # lineage records, not in the packet, whose digests must all resolve here.
        for p in rec.parents:
            if store.find(p) is not None:
                out.setdefault(p, f"parent of {rec.sha256[:12]} ({rec.operator})")
    for sha in out:
        store.verify(sha)  # raises, naming the digest, if the store cannot produce it
    return out


def write_release(settings: Settings, candidate: str, niche: str, out: Path) -> Path:
    """Write the packet to ``out`` (a new directory), atomically; returns ``out``."""
    if out.exists():
        raise UsageError(f"{out} already exists", "pass another -o, or remove it first")
    cand = _find(settings, candidate)
    digests = _digests(settings, cand)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        vectors = [cand.vector.to_json()] + ([cand.parent.to_json()] if cand.parent else [])
        (tmp / FITNESS).write_text(json.dumps(vectors, indent=2) + "\n", encoding="utf-8")
        (tmp / BOM).write_text(json.dumps(cyclonedx_bom(cand, niche, digests, now), indent=2))
        write_spdx(cand, niche, now, tmp / SPDX)
        (tmp / NOTE).write_text(release_note(cand, niche, digests), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- the release note ----------------------------------------------------------------------


def release_note(cand: Candidate, niche: str, digests: dict[str, str]) -> str:
    v, p = cand.vector, cand.parent
    u = v.utility
    lo, hi = u["ci95"]
    lines = [
        f"# {cand.label}",
        "",
        f"**For:** {niche}",
        "",
        "## What it is",
        "",
        f"- Base model: `{cand.model_id}` {cand.version}, artifact `sha256:{cand.base_sha256}` "
        f"({human_size(cand.base_size)}), license {cand.license}.",
    ]
    for a in cand.adapters:
        lines.append(
            f"- LoRA adapter `{a['id']}` at scale {a['scale']:g}: `sha256:{a['sha256']}` "
            f"({human_size(a['size_bytes'])}), license {a['license']}"
            + (f"; task: {a['task']}" if a.get("task") else "")
            + (f"; trained on: {a['training_data']}" if a.get("training_data") else "")
        )
    lines += [
        "",
        f"## Evidence (suite `{v.suite}`, `sha256:{v.suite_sha256[:16]}…`)",
        "",
        "| candidate | accuracy | 95% CI | first token | tok/s | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for vec in [v] + ([p] if p else []):
        a, b = vec.utility["ci95"]
        lines.append(
            f"| {vec.candidate} | {vec.acc:.2f} ({vec.utility['passed']}/{vec.utility['n']}) "
            f"| {a:.2f}–{b:.2f} | {vec.latency['ttft_s']:.3f} s | {vec.latency['avg_ts'] or 0:.1f}"
            f" | {human_size(vec.memory['peak_rss_bytes'])} |"
        )
    if p is None:
        lines += ["", "No scorecard of its parent on this suite: nothing to compare against."]
    else:
        delta = v.acc - p.acc
        lines += ["", f"Against its parent: accuracy {delta:+.2f} on {u['n']} items."]
    d = v.device
    lines += [
        "",
        "## Measured on",
        "",
        f"{d.get('cpu_info') or 'unknown CPU'}, {d.get('cores')} logical cores, "
        f"{human_size(d.get('ram_total_bytes'))} RAM, {d.get('os')} ({d.get('arch')}); "
        f"llama.cpp {v.build.get('build_commit')}, {v.build.get('runtime')}, locara "
        f"{v.build.get('locara')}. Local only: {v.privacy['local_only']}, escalations: "
        f"{v.privacy['escalations']}.",
        "",
        "## Limitations",
        "",
        f"- The evidence is {u['n']} items of one suite; the interval ({lo:.2f}–{hi:.2f}) says "
        "how little that pins down.",
        "- Adapters apply only to the exact base digest above; Locara refuses any other.",
        "- Speeds and memory are from the device above and differ elsewhere.",
        "",
        "## Digests (each verified in the Locara store)",
        "",
    ]
    lines += [f"- `sha256:{sha}` — {what}" for sha, what in digests.items()]
    return "\n".join(lines) + "\n"


# -- CycloneDX -----------------------------------------------------------------------------


def cyclonedx_bom(
    cand: Candidate, niche: str, digests: dict[str, str], now: dt.datetime
) -> dict[str, Any]:
    """The ML-BOM as JSON, with a modelCard, validated against CycloneDX 1.6."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType, Pedigree
    from cyclonedx.model.license import LicenseExpression
    from cyclonedx.output.json import JsonV1Dot6

    def component(name: str, sha: str, version: str | None, lic: str | None) -> Component:
        return Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=name,
            version=version,
            bom_ref=f"sha256:{sha}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
            licenses=[LicenseExpression(lic)] if lic and lic != "NOASSERTION" else [],
        )

    ancestors = [component(cand.model_id, cand.base_sha256, cand.version, cand.license)]
    ancestors += [
        component(f"adapter {a['id']}", a["sha256"], None, a["license"]) for a in cand.adapters
    ]
    if cand.adapters:
        main = Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=cand.label,
            version=cand.version,
            bom_ref=f"release:{cand.label}",
            pedigree=Pedigree(ancestors=ancestors),
        )
    else:
        main = ancestors[0]
        parents = [p for p in digests if p != cand.base_sha256]
        if parents:
            main.pedigree = Pedigree(
                ancestors=[component(digests[p], p, None, None) for p in parents]
            )
    main.description = f"{cand.label}, released for: {niche}"
    bom = Bom()
    bom.metadata.component = main
    bom.metadata.timestamp = now
    data: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    data["metadata"]["component"]["modelCard"] = _model_card(cand, niche)
    validate_bom(data)
    return data


def _model_card(cand: Candidate, niche: str) -> dict[str, Any]:
    v = cand.vector
    lo, hi = v.utility["ci95"]
    metrics = [
        {"type": "accuracy", "value": f"{v.acc:.4f}", "slice": v.suite,
         "confidenceInterval": {"lowerBound": f"{lo:.4f}", "upperBound": f"{hi:.4f}"}},
        {"type": "time-to-first-token-s", "value": f"{v.latency['ttft_s']:.4f}"},
        {"type": "generation-tokens-per-s", "value": f"{v.latency['avg_ts'] or 0:.2f}"},
        {"type": "peak-rss-bytes", "value": str(v.memory["peak_rss_bytes"])},
    ]  # fmt: skip
    return {
        "modelParameters": {
            "task": "text-generation",
            "architectureFamily": "llama",
            "modelArchitecture": cand.model_id,
        },
        "quantitativeAnalysis": {"performanceMetrics": metrics},
        "considerations": {
            "useCases": [niche],
            "technicalLimitations": [
                f"evidence from {v.utility['n']} items of suite {v.suite}",
                "adapters apply only to the base digest named in the pedigree",
            ],
        },
    }


def validate_bom(data: dict[str, Any]) -> None:
    """Validate against the CycloneDX 1.6 JSON schema bundled with cyclonedx-python-lib."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(data))
    if error is not None:
        raise LocaraError(
            f"the CycloneDX BOM does not validate: {str(error)[:300]}",
            "report this: Locara wrote a BOM its own check refuses",
        )


# -- SPDX 3 --------------------------------------------------------------------------------


def write_spdx(cand: Candidate, niche: str, now: dt.datetime, out: Path) -> None:
    """An SPDX 3.0.1 JSON-LD document whose root is an AIPackage with its ancestry."""
    from spdx_python_model import v3_0_1 as spdx

    ns = f"https://locara.local/spdx/{uuid.uuid4()}"
    objects = spdx.SHACLObjectSet()
    tool = spdx.Tool(spdxId=f"{ns}/tool/locara", name="locara")
    info = spdx.CreationInfo(specVersion="3.0.1", created=now, createdBy=[], createdUsing=[tool])
    tool.creationInfo = info
    agent = spdx.Organization(spdxId=f"{ns}/agent/local", name="local user", creationInfo=info)
    info.createdBy = [agent]

    def sha(h: str) -> Any:
        return spdx.Hash(algorithm=spdx.HashAlgorithm.sha256, hashValue=h)

    v = cand.vector
    package = spdx.ai_AIPackage(
        spdxId=f"{ns}/package/release",
        creationInfo=info,
        name=cand.label,
        software_packageVersion=cand.version,
        software_downloadLocation="NOASSERTION",
        software_primaryPurpose=spdx.software_SoftwarePurpose.model,
        releaseTime=now,
        suppliedBy=agent,
        ai_domain=[niche],
        ai_limitation=f"evidence from {v.utility['n']} items of suite {v.suite}",
        ai_metric=[
            spdx.DictionaryEntry(key="accuracy", value=f"{v.acc:.4f}"),
            spdx.DictionaryEntry(key="avg_ts", value=f"{v.latency['avg_ts'] or 0:.2f}"),
        ],
        verifiedUsing=[] if cand.adapters else [sha(cand.base_sha256)],
    )
    elements: list[Any] = [agent, tool, package]
    parents = [(cand.model_id, cand.base_sha256)] if cand.adapters else []
    parents += [(f"adapter {a['id']}", a["sha256"]) for a in cand.adapters]
    for i, (name, digest) in enumerate(parents):
        parent = spdx.ai_AIPackage(
            spdxId=f"{ns}/package/parent-{i}",
            creationInfo=info,
            name=name,
            software_downloadLocation="NOASSERTION",
            verifiedUsing=[sha(digest)],
        )
        rel = spdx.Relationship(
            spdxId=f"{ns}/relationship/{i}",
            creationInfo=info,
            from_=package,
            to=[parent],
            relationshipType=spdx.RelationshipType.descendantOf,
        )
        elements += [parent, rel]
    lic = spdx.simplelicensing_LicenseExpression(
        spdxId=f"{ns}/license/declared",
        creationInfo=info,
        simplelicensing_licenseExpression=cand.license,
    )
    declared = spdx.Relationship(
        spdxId=f"{ns}/relationship/license",
        creationInfo=info,
        from_=package,
        to=[lic],
        relationshipType=spdx.RelationshipType.hasDeclaredLicense,
    )
    elements += [lic, declared]
    doc = spdx.SpdxDocument(
        spdxId=f"{ns}/document",
        creationInfo=info,
        name=f"{cand.label} release",
        profileConformance=[
            spdx.ProfileIdentifierType.core,
            spdx.ProfileIdentifierType.ai,
            spdx.ProfileIdentifierType.software,
        ],
        rootElement=[package],
        element=elements,
    )
    for obj in [doc, *elements]:
        objects.add(obj)
    with out.open("wb") as f:
        spdx.JSONLDSerializer().write(objects, f)
