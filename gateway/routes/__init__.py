"""Thin HTTP routes: parse → service → JSON or SSE."""
