"""TrueFoundry's fine-tuning at `/api/llm`: files (`/api/llm/files`) and jobs
(`/api/llm/fine_tuning/jobs`) in OpenAI's shapes and routes (TrueFoundry's API is
OpenAI's), served by the same handlers. A job's `training_file` is a file uploaded
here, so the OpenAI SDK with `base_url=".../api/llm"` runs a whole fine-tune."""

from __future__ import annotations

from fastapi import APIRouter

from bridge.routes.openai import files_router, jobs_router

router = APIRouter(prefix="/api/llm", tags=["truefoundry"])
router.include_router(files_router)
router.include_router(jobs_router)
