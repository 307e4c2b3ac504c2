"""The names and the final states of jobs and exports, declared once. The control plane's
state machines (`server/lifecycle.py`, `server/exports.py`), every REST surface and the
CLI read them here; this module imports only the contract."""

from __future__ import annotations

from tunewire.v1 import exports_pb2, jobs_pb2

Job = jobs_pb2.Job
Export = exports_pb2.Export

FINAL_JOB_STATES = frozenset({Job.STATE_SUCCEEDED, Job.STATE_FAILED, Job.STATE_CANCELLED})
"""A job in one of these never changes again."""
FINAL_EXPORT_STATES = frozenset({Export.STATE_SUCCEEDED, Export.STATE_FAILED})
"""Likewise for an export."""


def job_state_name(state: int) -> str:
    """`running`, `succeeded`, ...: the OpenAI spelling, and the `state` of state events."""
    return Job.State.Name(state).removeprefix("STATE_").lower()


def export_state_name(state: int) -> str:
    """`queued`, `running`, `succeeded`, `failed`."""
    return Export.State.Name(state).removeprefix("STATE_").lower()
