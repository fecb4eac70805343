"""aiohttp app: health and readiness, the JSON API, and the token check."""
