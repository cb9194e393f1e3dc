# The COCO 2017 layout check the sweep runs before anything (benchmark.detection.layout.CocoLayout):
# building the training split proves annotations/instances_{train,val}2017.json, train2017/ and
# val2017/ are under --data-root. Not a training config.
custom_imports = dict(imports=["benchmark.detection.layout"], allow_failed_imports=False)
train_dataloader = dict(dataset=dict(type="CocoLayout", split="train"))
val_dataloader = dict(dataset=dict(type="CocoLayout", split="val"))
data_preprocessor = dict()
