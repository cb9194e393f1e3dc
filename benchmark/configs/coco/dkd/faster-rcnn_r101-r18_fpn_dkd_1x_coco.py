# DKD on the RoI classification logits: alpha 1, beta 0.25, T 1, no warm-up
# (mdistiller detection/model/config.py).
_base_ = "../distill/faster-rcnn_r101-r18_fpn_1x_coco.py"
model = dict(distill=dict(type="dkd", alpha=1.0, beta=0.25, temperature=1.0, warmup=1))
