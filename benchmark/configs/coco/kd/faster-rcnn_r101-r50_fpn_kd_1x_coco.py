# KD on the RoI classification logits: T 1, weight 1 (no reference config exists for plain KD on
# RoI logits: this suite's choice, the temperature of the DKD detection setting).
_base_ = "../distill/faster-rcnn_r101-r50_fpn_1x_coco.py"
model = dict(distill=dict(type="kd", temperature=1.0, kd_weight=1.0))
