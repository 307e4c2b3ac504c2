"""TrueFoundry's fine-tuning jobs at `/api/llm/fine_tuning/jobs`: the OpenAI job
shape and routes (TrueFoundry's API is OpenAI's), served by the same handlers."""

from __future__ import annotations

from fastapi import APIRouter

from bridge.routes.openai import jobs_router

router = APIRouter(prefix="/api/llm", tags=["truefoundry"])
router.include_router(jobs_router)
