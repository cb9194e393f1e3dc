# Cosine schedule to 0, stepped once per epoch (CKD's paper recipe).
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = [dict(type="CosineAnnealingLR", by_epoch=True, T_max=480, eta_min=0.0, convert_to_iter_based=False)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=480, val_interval=1)
val_cfg = dict(type="ValLoop")
