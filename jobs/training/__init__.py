"""Training one run: the model factory (timm), the losses, the optimizer and schedule, checkpoints,
and the trainer whose loop reads top to bottom. Everything here needs the training stack (torch, timm).
"""
