"""Names vulture reports as unused that are used where it cannot see (``make lint``).

Each line names one, with the reason. Vulture only parses this file: a bare name or
``_.attribute`` counts as a use. Delete a line when the reason stops being true; code
that is simply unused is removed instead of listed here.
"""

# Overrides a framework calls.
_.format_commands  # click.Group: builds `locara --help`'s command list (cli/main.py)

# Arguments that only key a functools cache: a replaced file must miss it.
identity  # planner/shapes.py _gguf_shape
mtime_ns  # server/listing.py _gguf_facts
attrs  # rag/extract.py: HTMLParser.handle_starttag's signature

# Fields of values written out whole (asdict / to_json), read by whoever reads the JSON.
_.ram_physical_bytes  # device/profile.py DeviceProfile (locara device --json)

# Attributes of a foreign object.
_.vocab_only  # backends/llama_server.py: llama.cpp's model params (a ctypes struct)
_.pedigree  # ecology/release.py: a cyclonedx Component's
_.creationInfo  # ecology/release.py: an spdx Tool's
_.createdBy  # ecology/release.py: an spdx CreationInfo's

# Pydantic fields outside *_schema.py / *manifest.py (read by validation, not by name).
_.schema_version  # router/policy.py RouterPolicy: the file format's version

# Used by bench/ scripts, which are part of the repository but not of src/.
estimate_fit  # bench/fit.py
measure_load  # bench/fit.py
write_synthetic_llama  # bench/fit.py

# Used by tests only, kept on purpose.
close_cached_connections  # ledger/db.py: tests end a writer as a process exit would
public_key_text  # registry/signing.py: the publisher's half of manifest signatures
sign_manifest  # registry/signing.py: (no `locara` command signs yet; tests sign fixtures)

# In progress in other issues' work (adapters, RAG): remove when read or dropped.
_.for_base  # ecology/adapters.py
_.base_name  # ecology/peft.py
_.added_at  # rag/collection.py
_.answered_by  # router/cascade.py Outcome: set, never read yet (router, issue #13)
