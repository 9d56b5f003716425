"""Canary pre-flight replay: golden prompts rendered by both pools before traffic moves.

Owned by the replay work (issue 12 item 9); the fields below are the agreed entry points
in CanarySpec.replay and CanaryStatus.replay.
"""

from __future__ import annotations

from pydantic import Field

from modelfleet.api.common import ApiModel


class ReplaySpec(ApiModel):
    """Golden prompts and seeds rendered on the stable and the candidate before step 1."""

    config_map: str = Field(description="ConfigMap holding the golden prompts.")


class ReplayStatus(ApiModel):
    """What the pre-flight replay found."""

    result: str | None = Field(default=None, description="pass, fail or inconclusive.")
    message: str = Field(default="", description="Both scores, in words.")
