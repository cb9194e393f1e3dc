# Faster R-CNN, MobileNetV2 FPN, MMDetection's 1x schedule on COCO 2017 (MMDetection has no
# MobileNetV2 Faster R-CNN config): the R-50 config with MMDetection's MobileNetV2 truncated
# after its last FPN input (benchmark.detection.model.TruncatedMobileNetV2). FPN inputs: the
# stride-4/8/16/32 stage outputs of 24/32/96/320 channels (out_indices 1, 2, 4, 6; the ReviewKD /
# DKD MobileNetV2-FPN student), ImageNet weights from torchvision. Nothing is frozen
# (frozen_stages=-1), as the DKD reference's student (mdistiller detection/configs/DKD/DKD-MV2-R50.yaml:
# FREEZE_AT 0); BN statistics stay frozen (norm_eval) with a trainable affine, where the reference's
# FrozenBN (MODEL.MOBILENETV2.NORM) also freezes the affine. A student of the coco suite; runs alone
# with MMDetection's tools.
_base_ = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
custom_imports = dict(imports=["benchmark.detection.model"], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type="TruncatedMobileNetV2",
        out_indices=(1, 2, 4, 6),
        frozen_stages=-1,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint="torchvision://mobilenet_v2"),
    ),
    neck=dict(in_channels=[24, 32, 96, 320]),
)
