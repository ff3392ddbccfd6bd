"""Every flow by name, and the schedule of those that run by themselves: the one list behind
`bacpipes flows run`, `bacpipes flows serve` and the demo."""

from __future__ import annotations

from typing import Any

from flows.ml import ab_flow, ab_plan_flow, baseline_flow, train_flow
from flows.ops import alerts_flow, backup_flow, pitr_backup_flow
from flows.retention import retention_flow

# each takes a settings file first (the closed-loop experiment takes none: it builds its own buildings)
FLOWS: dict[str, Any] = {
    "baseline": baseline_flow,
    "train": train_flow,
    "ab-plan": ab_plan_flow,
    "ab": ab_flow,
    "retention": retention_flow,
    "alerts": alerts_flow,
    "backup": backup_flow,
    "pitr-backup": pitr_backup_flow,
}
# flows that take a history window (`--days`)
WINDOWED = ("baseline", "train", "ab", "ab-plan")

# UTC cron: alerts every minute, retention hourly, backup daily before the ML flows (quiet hours, and a
# dump that is not competing with training), baseline daily, training nightly, A/B daily after the baseline
SCHEDULES = {
    "alerts": "* * * * *",
    "backup": "15 0 * * *",
    "pitr-backup": "30 0 * * *",
    "retention": "5 * * * *",
    "baseline": "30 1 * * *",
    "train": "0 2 * * *",
    "ab": "30 3 * * *",
}
