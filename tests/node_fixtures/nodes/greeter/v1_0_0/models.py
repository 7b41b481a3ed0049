"""Payload models the greeter's contract names as ``payload_model``."""

from __future__ import annotations

from pydantic import BaseModel


class GreetingRequested(BaseModel):
    name: str


class Greeted(BaseModel):
    greeting: str
