"""The worker: the process that runs torch work (`python -m trainer.worker`).

A worker imports torch once, then asks the control plane for leases over the internal
WorkerService contract and does what each says: train a job (`train`), run an export
(`export`) or serve generation (`serve`). It is told blob keys and model names, never
local paths, and reads and writes through the blob store, so it runs anywhere it can
reach the control plane and the storage. This package is the only part of `trainer`
that speaks gRPC; the recipe, merge, export and generation modules it drives know
nothing of it.
"""
