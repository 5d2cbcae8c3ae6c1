"""Lightning callbacks: sparsity dashboards, λ schedules, target sparsity, structure freeze,
hard quantization, stage restarts."""

from .hard_quantization import HardQuantization
from .path_norm_monitor import PathNormMonitor
from .pathprox_balancing import PathProxBalancing
from .regularization_scheduler import RegularizationScheduler
from .sparsity_monitor import SparsityMonitor
from .sparsity_target import SparsityTarget
from .stage_restart import StageRestart
from .structure_freeze import StructureFreeze

__all__: list[str] = [
    "HardQuantization",
    "PathNormMonitor",
    "PathProxBalancing",
    "RegularizationScheduler",
    "SparsityMonitor",
    "SparsityTarget",
    "StageRestart",
    "StructureFreeze",
]
