"""Serve work: the inference worker. It keeps base models loaded (`trainer.generation`),
switches adapters per request, and serves `InferenceService` at its own address for the
control plane to stream through, for as long as it holds its serving lease."""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from server import request_ids
from trainer import classifier, models
from trainer.generation import Generator, InvalidPrompt, SamplingParams, coalesced
from trainer.worker.lease import Lease
from trainer.worker.train import Place
from tunewire.v1 import models_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger("tunewire.worker")
THREADS = 16
STREAM_INTERVAL = 0.02
"""Generated text goes to the control plane at most this often (see `coalesced`)."""


class InferenceServicer(worker_pb2_grpc.InferenceServiceServicer):
    def __init__(self, place: Place, token: str) -> None:
        self.place = place
        self.expected = f"Bearer {token}".encode()
        self.generator = Generator()
        self.classifiers = classifier.Classifiers()

    def _authorize(self, context: grpc.ServicerContext) -> None:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(header.encode(), self.expected):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "not this worker's control plane")

    @contextlib.contextmanager
    def _call(self, context: grpc.ServicerContext, what: str, model: str) -> Iterator[None]:
        """A call under its request id (the control plane's caller's), logged when done."""
        given = dict(context.invocation_metadata() or ()).get(request_ids.KEY)
        # Set, not reset by token: a stream the caller drops is closed on another thread.
        request_ids.current.set(request_ids.accept(given))
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = round(time.perf_counter() - started, 3)
            log.info(what, extra={"fields": {"model": model, "seconds": seconds}})
            request_ids.current.set(None)

    def _adapter(self, key: str) -> Path:
        return self.place.blobs.get_dir(key, self.place.cache)

    def Generate(
        self, request: worker_pb2.InferenceServiceGenerateRequest, context
    ) -> Iterator[models_pb2.GenerateResponse]:
        self._authorize(context)
        with self._call(context, "generate", request.base_model):
            yield from self._generate(request, context)

    def _generate(
        self, request: worker_pb2.InferenceServiceGenerateRequest, context
    ) -> Iterator[models_pb2.GenerateResponse]:
        asked = request.request
        given = {
            name: getattr(asked, name)
            for name in ("max_tokens", "temperature", "top_p", "seed")
            if asked.HasField(name)
        }
        params = SamplingParams(stop=tuple(asked.stop), **given)
        messages = [{"role": m.role, "content": m.content} for m in asked.messages]
        prompt = messages or asked.prompt
        try:
            if request.onnx_export:
                chunks = self.generator.generate_onnx(
                    self._adapter(request.onnx_export), prompt, params
                )
            else:
                base = models.resolve_model(self.place.models_dir, request.base_model)
                adapter = self._adapter(request.adapter) if request.adapter else None
                chunks = self.generator.generate(base, adapter, prompt, params)
            for chunk in coalesced(chunks, STREAM_INTERVAL):
                yield models_pb2.GenerateResponse(
                    text=chunk.text,
                    finish_reason=chunk.finish_reason or "",
                    usage=models_pb2.Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                    if chunk.usage
                    else None,
                )
        except InvalidPrompt as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ValueError as error:  # the base model is gone from this worker's models dir
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))

    def UnloadAdapter(self, request: worker_pb2.UnloadAdapterRequest, context):
        self._authorize(context)
        if (local := self.place.blobs.local_path(request.adapter)) is None:
            local = self.place.cache / request.adapter
        self.generator.unload(local)
        self.classifiers.unload(local)
        return worker_pb2.UnloadAdapterResponse()

    def Classify(
        self, request: worker_pb2.InferenceServiceClassifyRequest, context
    ) -> models_pb2.ClassifyResponse:
        self._authorize(context)
        with self._call(context, "classify", request.base_model):
            return self._classify(request, context)

    def _classify(
        self, request: worker_pb2.InferenceServiceClassifyRequest, context
    ) -> models_pb2.ClassifyResponse:
        inputs = list(request.request.inputs)
        try:
            base = models.resolve_model(self.place.models_dir, request.base_model)
            adapter = self._adapter(request.adapter)
            if classifier.read_head(adapter) is None:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the model generates text; Classify needs a classification fine-tune",
                )
            results = self.classifiers.classify(base, adapter, inputs)
        except ValueError as error:  # the base model is gone from this worker's models dir
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return models_pb2.ClassifyResponse(
            classifications=[
                models_pb2.Classification(
                    input=text,
                    predictions=result.predictions,
                    labels=[
                        models_pb2.Classification.LabelConfidence(label=label, confidence=p)
                        for label, p in result.confidences
                    ],
                    multi_label=result.multi_label,
                )
                for text, result in zip(inputs, results, strict=True)
            ]
        )


def start(place: Place, token: str, listen: str) -> tuple[grpc.Server, str]:
    """Start serving on `listen` (host:port, port 0 picks one); returns the address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=THREADS))
    worker_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(place, token), server)
    host, _, port = listen.rpartition(":")
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, f"{host}:{bound}"


def hold(lease: Lease, stop: threading.Event) -> None:
    """Serve until the lease is lost or `stop` is set; the heart-beat keeps the lease."""
    while not stop.wait(0.5):
        if lease.lost.is_set():
            return
