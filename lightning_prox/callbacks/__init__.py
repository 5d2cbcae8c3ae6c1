"""Lightning callbacks: sparsity dashboards, λ schedules, hard quantization, stage restarts."""

__all__: list[str] = []
