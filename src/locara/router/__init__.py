"""Router policies: route a prompt to a local candidate, cascade, or escalate (``reference/004_*``).

policy.py   RouterPolicy files (JSON/TOML), validation, JSON Schema
decide.py   route matching (keywords, example similarity), choose_local_descendant
cascade.py  confidence signals and running a decision
remote.py   escalation to OpenAI-compatible endpoints (deadline, fallbacks, no key leaks)
"""
