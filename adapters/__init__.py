"""Adapters: one implementation per port and technology, plus the composition root."""
