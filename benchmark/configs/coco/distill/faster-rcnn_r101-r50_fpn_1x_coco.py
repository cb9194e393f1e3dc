# Distillation of Faster R-CNN FPN on COCO 2017, R-101 (teacher) -> R-50 (student), MMDetection's 1x
# schedule (12 epochs, SGD lr 0.02 at 16 images per batch, x0.1 at epochs 8 and 11, 500 warm-up
# iterations, single scale 1333x800). The student trains as a plain Faster R-CNN (distill 'ce');
# the configs in ../kd, ../dkd, ../ckd, ../fitnet add a method. The teacher is MMDetection's
# model-zoo checkpoint (faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth), loaded strictly, frozen.
#   python tools/train.py <this file>    (MMDetection's tooling, from the repository root), or
#   Runner.from_cfg(Config.fromfile(<this file>)).train()
_base_ = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"
custom_imports = dict(imports=["benchmark.detection.model"], allow_failed_imports=False)
model = dict(
    _delete_=True,
    type="DistillationDetector",
    student=dict(cfg_path="mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"),
    teacher=dict(cfg_path="mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py"),
    teacher_checkpoint="checkpoints/faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth",
    distill=dict(type="ce"),
)
