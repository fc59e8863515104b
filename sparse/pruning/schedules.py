"""Pruning schedules: when masks appear and (for sparsity patterns) how sparse they are."""
from __future__ import annotations

from ..recipe import Schedule


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))**3, clamped to the range."""
    if step <= start:
        return initial
    if step >= end:
        return final
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def sparsity_at(schedule: Schedule, final: float, step: int) -> float | None:
    """Sparsity the masks should have after ``step`` optimizer steps, or ``None`` before pruning starts."""
    if schedule.kind == "oneshot":
        return final if step >= schedule.at_step else None
    if step < schedule.start_step:
        return None
    return cubic_sparsity(step, schedule.initial_sparsity, final, schedule.start_step, schedule.end_step)


def is_update_step(schedule: Schedule, step: int, refresh_every: int, active: bool) -> bool:
    """Whether masks are (re)computed after ``step`` optimizer steps (step 0: at construction)."""
    if schedule.kind == "oneshot":
        if step == schedule.at_step or (step > schedule.at_step and not active):
            return True
    else:
        if schedule.start_step <= step <= schedule.end_step and (
                (step - schedule.start_step) % schedule.frequency == 0 or step == schedule.end_step):
            return True
        if step > schedule.end_step and not active:
            return True
    return bool(active and refresh_every and step > 0 and step % refresh_every == 0)
