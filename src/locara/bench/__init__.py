"""Benchmarks: how fast a stored model runs on this device, saved for the planner.

``runner`` measures (pp/tg tok/s, time to first token, load time, peak memory);
``results`` appends and reads the JSON-lines result file; ``plot`` draws them.
"""
