# FitNet on the FPN outputs: one 1x1-conv regressor per level, MSE averaged over the 5 levels,
# weight 1 (no reference config for FitNet on FPN: this suite's choice, untuned).
_base_ = "../distill/faster-rcnn_r101-r18_fpn_1x_coco.py"
model = dict(distill=dict(type="fitnet", hint_weight=1.0))
