"""Condition and Event reasons for Canary objects (CamelCase, stable: programs match them)."""

from __future__ import annotations

POOLS_NOT_READY = "PoolsNotReady"
STEP_PROGRESSING = "StepProgressing"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
ANALYSIS_FAILED = "AnalysisFailed"
ROLLED_BACK = "RolledBack"
PROMOTED = "Promoted"
SUCCEEDED = "Succeeded"
ABORTED = "Aborted"
PAUSED_BY_USER = "PausedByUser"
PAUSED_NO_DATA = "PausedNoData"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
RESUMED = "Resumed"
RETRIED = "Retried"
ACTION_IGNORED = "ActionIgnored"
INVALID_ACTION = "InvalidAction"
