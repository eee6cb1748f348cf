"""Locara: local models as normal software."""

import os

__version__ = "0.1.0"

# Iterations an OpenMP thread spins before it sleeps (libgomp's default: 300,000). Short
# enough that a thread whose partner lost its core yields the CPU instead of burning it,
# long enough that operations that finish together never sleep (measured: 2 decode
# threads on 2 cores beside a busy process, 2.3 tok/s with the default, 22 with 2,000).
# libgomp reads it once, when llama.cpp's library is first loaded, and many paths load it
# (a vocabulary, an embedding, a load): so it is set here, before any of them can. The
# user's own setting wins; llama-server workers get the same (worker_environment).
SPIN_COUNT = "2000"
os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
