"""Where the model and the collectives meet: the run config, the distributed inference
pipeline, the closed loop (``infer``) and the open loop (``serve``) that feed it."""
