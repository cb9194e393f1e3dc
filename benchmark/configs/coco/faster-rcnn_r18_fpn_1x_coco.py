# Faster R-CNN, ResNet-18 FPN, MMDetection's 1x schedule on COCO 2017 (MMDetection has no R-18 1x
# config): the R-50 config with a ResNet-18 backbone (ImageNet weights from torchvision) and the
# FPN on its stage widths 64/128/256/512. A student of the coco suite; runs alone with
# MMDetection's tools as any of its configs.
_base_ = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
model = dict(
    backbone=dict(depth=18, init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet18")),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
