# scikit-learn's load_digits at 32x32x3 with a fixed stratified split (embedded, no data root).
num_classes = 10
data_preprocessor = dict(
    type="DistillDataPreprocessor",
    mean=(0.305264, 0.305264, 0.305264),  # benchmark.data.DIGITS_MEAN (train split)
    std=(0.323587, 0.323587, 0.323587),  # benchmark.data.DIGITS_STD
    augment=False,  # horizontal flips change what a digit is
)
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="DigitsDistill", split="train"),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="DigitsDistill", split="test"),
)
