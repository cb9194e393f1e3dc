# Runtime settings shared by every run (MMEngine conventions).
default_scope = None
log_level = "WARNING"
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # Every epoch, keeping the two newest: MMEngine deletes the oldest before writing the
    # next, so a complete previous checkpoint is always there if the newest is torn.
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
randomness = dict(seed=0, deterministic=False)
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
