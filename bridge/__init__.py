"""Tunewire's REST bridge: the gRPC API as REST/JSON, multipart uploads, NDJSON and
SSE streams, and the OpenAI, Cohere, Helix and TrueFoundry fine-tuning APIs."""

from bridge.main import create_app, serve

__all__ = ["create_app", "serve"]
