"""Canary decision core: pure functions from (spec, status, observations, now) to a Decision."""

from __future__ import annotations

from modelfleet.canary.analysis import judge_metric, overall
from modelfleet.canary.core import (
    CONDITION_PROGRESSING,
    CONDITION_READY,
    decide,
    early_check_period,
    format_time,
    parse_time,
    plan_analysis,
)
from modelfleet.canary.manual import ACTION_ANNOTATION, ManualAction, action_value, parse_action
from modelfleet.canary.types import (
    Action,
    AnalysisObservation,
    AnalysisPlan,
    Decision,
    EmitEvent,
    MetricObservation,
    Observations,
    PoolReadiness,
    Promote,
    RecordAnalysis,
    RollBack,
    ScaleDownStable,
    SetWeight,
)

__all__ = [
    "ACTION_ANNOTATION",
    "CONDITION_PROGRESSING",
    "CONDITION_READY",
    "Action",
    "AnalysisObservation",
    "AnalysisPlan",
    "Decision",
    "EmitEvent",
    "ManualAction",
    "MetricObservation",
    "Observations",
    "PoolReadiness",
    "Promote",
    "RecordAnalysis",
    "RollBack",
    "ScaleDownStable",
    "SetWeight",
    "action_value",
    "decide",
    "early_check_period",
    "format_time",
    "judge_metric",
    "overall",
    "parse_action",
    "parse_time",
    "plan_analysis",
]
