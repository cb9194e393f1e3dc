# CIFAR-100 from <data_root>/cifar-100-python (official python format).
data_root = "data"
num_classes = 100
data_preprocessor = dict(
    type="DistillDataPreprocessor",
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
    augment=True,  # RandomCrop(32, padding=4) + horizontal flip, on the batch
)
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="CIFAR100Distill", data_root=data_root, split="train"),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="CIFAR100Distill", data_root=data_root, split="test"),
)
