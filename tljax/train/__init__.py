"""Training: typed configs, the optimiser over the trainable parameters only, pure jitted steps, losses,
the loop with its checkpoints, curves and export, and data parallelism over a device mesh."""
