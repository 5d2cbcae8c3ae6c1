"""Lightning callbacks: sparsity dashboards, λ schedules, hard quantization, stage restarts."""

from .hard_quantization import HardQuantization
from .path_norm_monitor import PathNormMonitor
from .pathprox_balancing import PathProxBalancing
from .regularization_scheduler import RegularizationScheduler
from .sparsity_monitor import SparsityMonitor
from .stage_restart import StageRestart

__all__: list[str] = [
    "HardQuantization",
    "PathNormMonitor",
    "PathProxBalancing",
    "RegularizationScheduler",
    "SparsityMonitor",
    "StageRestart",
]
