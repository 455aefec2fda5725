"""Learning-rate schedules shared by the training loops."""
import torch


def warmup_linear_decay(optimizer, steps: int, warmup: int):
    """Linear warm-up over `warmup` steps, then linear (power-1 polynomial) decay to 0 at `steps`."""
    warmup = max(1, warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
