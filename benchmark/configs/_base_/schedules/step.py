# Step schedule: SGD, lr x gamma at the milestone epochs (the standard CIFAR-100 recipe).
optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = [dict(type="MultiStepLR", by_epoch=True, milestones=[150, 180, 210], gamma=0.1)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=240, val_interval=1)
val_cfg = dict(type="ValLoop")
