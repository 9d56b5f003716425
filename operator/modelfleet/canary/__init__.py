"""The canary: a pure decision core and the ports it owns.

- `core`: decide(), the state machine (spec, status, observations, now) -> Decision
  (next status + actions). Pure: no clock, no I/O.
- `plan`: plan_analysis(), what to measure before decide() (full or early window).
- `analysis`: judging one metric's measurements against its thresholds.
- `types`: decide()'s inputs (Observations) and outputs (Decision, the actions).
- `ports`: what the canary asks of others: MetricsProvider (implemented by
  `modelfleet.providers`) and TrafficRouter (implemented by the RoutingPolicy controller).
- `measure`: running an AnalysisPlan through a MetricsProvider.
- `manual`: the `modelfleet.io/action` annotation.
"""

from __future__ import annotations

from modelfleet.canary.analysis import judge_metric, overall
from modelfleet.canary.core import CONDITION_PROGRESSING, CONDITION_READY, decide
from modelfleet.canary.manual import ACTION_ANNOTATION, ManualAction, action_value, parse_action
from modelfleet.canary.measure import collect_analysis
from modelfleet.canary.plan import early_check_period, plan_analysis
from modelfleet.canary.ports import (
    Measurement,
    MetricQuery,
    MetricsProvider,
    TrafficRouter,
    TrafficTarget,
)
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
    ScalePool,
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
    "Measurement",
    "MetricObservation",
    "MetricQuery",
    "MetricsProvider",
    "Observations",
    "PoolReadiness",
    "Promote",
    "RecordAnalysis",
    "RollBack",
    "ScaleDownStable",
    "ScalePool",
    "SetWeight",
    "TrafficRouter",
    "TrafficTarget",
    "action_value",
    "collect_analysis",
    "decide",
    "early_check_period",
    "judge_metric",
    "overall",
    "parse_action",
    "plan_analysis",
]
