# ImageNet-1k from <data_root>/{train,val}/<wnid>/*.JPEG (torchvision ImageFolder layout).
# The dataset crops, flips and decodes to uint8 in the workers (RandomResizedCrop(224) +
# horizontal flip for train, Resize(256) + CenterCrop(224) for val, as mdistiller's ImageNet
# loaders); the preprocessor only normalises, on the device.
data_root = "data"
num_classes = 1000
data_preprocessor = dict(
    type="DistillDataPreprocessor",
    mean=(0.485, 0.456, 0.406),  # benchmark.data.IMAGENET_MEAN
    std=(0.229, 0.224, 0.225),  # benchmark.data.IMAGENET_STD
    augment=False,  # crop and flip already happened in the dataset, at full resolution
    non_blocking=True,  # with pin_memory: overlap the host-to-device copy of 512x3x224x224 uint8
)
train_dataloader = dict(
    batch_size=512,
    num_workers=16,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="ImageNetDistill", data_root=data_root, split="train"),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=16,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="ImageNetDistill", data_root=data_root, split="val"),
)
