"""Lightning callbacks: sparsity dashboards, λ schedules, hard quantization, stage restarts."""

from .stage_restart import StageRestart

__all__: list[str] = ["StageRestart"]
