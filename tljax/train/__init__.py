"""Training: configs, optimisers over the trainable parameters only, pure jitted steps, the loop,
checkpoints and sharding. Not built yet: `python -m tljax.train` says so and exits."""
