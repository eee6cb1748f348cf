"""The license gate: permissive licenses pass; others warn and must be accepted."""

from __future__ import annotations

# SPDX ids that allow commercial use without conditions beyond attribution/notice.
PERMISSIVE = frozenset(
    {
        "Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib",
        "0BSD", "Unlicense", "CC0-1.0", "CC-BY-4.0", "BSL-1.0",
    }
)  # fmt: skip

# LicenseRef- names used in the registry for licenses without an SPDX id.
NAMES = {
    "LicenseRef-Llama-3.1-Community": "Llama 3.1 Community License",
    "LicenseRef-Llama-3.2-Community": "Llama 3.2 Community License",
    "LicenseRef-Gemma-Terms-of-Use": "Gemma Terms of Use",
    "LicenseRef-Qwen-Research": "Qwen Research License (non-commercial)",
}


def is_permissive(license_id: str) -> bool:
    return license_id in PERMISSIVE


def license_warning(model_id: str, license_id: str) -> str:
    """The license warning shown before an app installs a model, or '' for a permissive license."""
    if is_permissive(license_id):
        return ""
    name = NAMES.get(license_id, license_id)
    return (
        f'⚠ Model "{model_id}" uses the {name}.\n'
        "Apps using this model may have commercial use restrictions."
    )
