"""Oracles: each judges one run (or the scripted graph) and turns what it sees into findings."""
