"""Model lifecycle: load on demand, keep alive, evict, queue."""
