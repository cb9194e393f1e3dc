# CKD on the RoI classification logits: weight 0.1, tau 1, the contrast over all sampled RoIs of
# the device (official CKD code, detection/, where it is only released combined with ReviewKD;
# here CKD alone).
_base_ = "../distill/faster-rcnn_r50-mobilenetv2_fpn_1x_coco.py"
model = dict(distill=dict(type="ckd", temperature=1.0, cl_weight=0.1, contrast="local"))
