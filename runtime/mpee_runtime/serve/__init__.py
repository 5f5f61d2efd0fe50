"""`mpee-serve`: the HTTP service (docs/serving.md). settings (the limits), requests (parsing a classify
body), backends (MPEE or the full model behind one interface), batcher (dynamic batching), metrics
(Prometheus), app (the Starlette routes), server (uvicorn), workers (processes on one port), cli. Imports
core, text, bundle and cli.common; never bench."""
