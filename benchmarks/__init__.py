"""Benchmark commands: they print figures; tests never time anything."""
