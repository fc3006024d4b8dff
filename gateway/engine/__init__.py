"""Engines: the protocol, internal types, and the transformers implementation."""
