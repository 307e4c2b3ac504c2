"""Tunewire's REST bridge: the gRPC API as REST/JSON, multipart uploads, NDJSON and
SSE streams, and the OpenAI, Cohere, Helix and TrueFoundry fine-tuning APIs
(`bridge.main`). The CLI (`bridge.cli`) lives here too, and imports none of it unless a
command serves it: a `tunewire` command starts without loading the REST app."""
