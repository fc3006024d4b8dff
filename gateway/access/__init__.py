"""Who may call what and how much: API keys (keys.py), the caller's principal and model visibility
(principal.py), per-key rate limits (limiter.py), the middleware tying them to every request (middleware.py)
and `python -m gateway keys create` (cli.py). Imports stay per module: the registry imports principal.py only."""
