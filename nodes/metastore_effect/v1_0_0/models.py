"""The metastore effect's config model: what ``config:`` of contracts/effects/metastore_effect.yaml may say, typed.

``onex.metastore.Metastore`` reads the same keys from the contract itself (it runs without a node too: in the HTTP
gateway, in a script); this model is what ``onex validate`` checks them against.
"""

from __future__ import annotations

from typing import Literal

from onex.nodes import EffectNode
from pydantic import Field


class ModelMetastoreConfig(EffectNode.Config):
    """Where the configuration FSM is, how long compiled flags are cached, which secret resolvers are allowed."""

    configuration_fsm: str = Field(
        description="The configuration lifecycle's FSM subcontract, relative to the project root."
    )
    flag_cache_ttl_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a compiled flag is cached at most (the bound on staleness if an event is lost).",
    )
    secret_resolvers: tuple[Literal["env"], ...] = Field(
        ("env",), description="Resolvers a configuration's secret references may name."
    )
