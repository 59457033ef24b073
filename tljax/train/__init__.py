"""Training: typed configs (`config`), the optimiser over the trainable parameters only (`optim`), the pure
jitted step (`step`), losses, stages of gradual unfreezing (`stages`), the loop with its checkpoints, curves and
export (`loop`, `checkpoints`, `curves`), one run per output folder (`rundir`), data parallelism over a device
mesh (`sharding`), and what a run trains: `run.prepare` and the objectives (`objectives`, `features`,
`distill`, `multitask`, `language_modelling`, `chat`); `launch` trains one run in this process (the command's and
`tljax.fine_tune`'s), `outcome` is what a finished run reports. The model of a finished run and its export are
`tljax.runs`."""
