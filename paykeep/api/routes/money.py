"""/v1 routes: see paykeep/api/routes/__init__.py."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
