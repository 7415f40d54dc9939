"""The OpenAI-compatible HTTP server and web chat page, a thin layer over the one generate
(see app.py; the batching engine is batching.py)."""
