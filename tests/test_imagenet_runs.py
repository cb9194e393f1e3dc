"""The ImageNet suite in use: recipes, published numbers, one run end to end, teachers from files.

Every method's recipe on both pairs (and that it builds at the pair's 224x224 feature shapes),
the published numbers and their Δ, each method for one epoch through MMEngine's Runner and an
interrupted run resumed, and torchvision teacher files (its cache, --teachers). Recipe values
are written here independently of the code under test, from mdistiller's
``configs/imagenet/{r34_r18,r50_mv1}/*.yaml`` and the CKD configs as the issue quotes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import methods
from benchmark.models import build_model
from benchmark.report.load import load_records
from benchmark.report.published import load_published
from benchmark.report.synthetic import make_record, write
from benchmark.report.tables import build_suite_tables, suite_pair_order
from benchmark.store.checkpoints import save_community_checkpoint
from benchmark.store.records import read_record
from benchmark.suites import Pair
from benchmark.train import STUDENT_EXPORT, RunSpec, build_config, execute, new_record
from tests.datagen import write_tiny_imagefolder
from tests.imagenet_common import (  # noqa: F401  (single_thread: the autouse fixture)
    N_CLASSES,
    R34_R18,
    R50_MV1,
    SUITE,
    TAPS_224,
    single_thread,
)

# --------------------------------------------------------------------------- recipes

# Written from mdistiller configs/imagenet/{r34_r18,r50_mv1}/{kd,dkd,crd}.yaml, its CFG defaults
# (DKD alpha 1; CRD weight 0.8, CE 1, d 128, K 16384, T 0.07, m 0.5) and the CKD values.
STEP = dict(epochs=100, momentum=0.9, weight_decay=1e-4, kind="step", milestones=(30, 60, 90), gamma=0.1)
EXPECTED_UNIFIED = {
    # method: (batch, lr, method config without 'type'; dkd beta per pair below)
    "ce": (512, 0.2, {}),
    "kd": (512, 0.2, {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}),
    "dkd": (512, 0.2, {"alpha": 1.0, "temperature": 1.0, "warmup": 1, "ce_weight": 1.0}),
    "crd": (
        256,
        0.1,
        {"crd_weight": 0.8, "ce_weight": 1.0, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5},
    ),
    "crd_kd": (
        256,
        0.1,
        {
            "crd_weight": 0.8,
            "ce_weight": 1.0,
            "kd_weight": 1.0,
            "temperature": 1.0,
            "feat_dim": 128,
            "nce_k": 16384,
            "nce_t": 0.07,
            "nce_m": 0.5,
        },
    ),
    "ckd": (512, 0.2, {"cl_weight": 10.0, "temperature": 1.0, "ce_weight": 1.0}),
    "fitnet": (512, 0.2, {"hint_weight": 100.0, "ce_weight": 1.0}),
}
EXPECTED_DKD_BETA = {R34_R18: 0.5, R50_MV1: 2.0}


def test_suite_is_registered_with_its_pairs():
    assert SUITE.pairs == (R34_R18, R50_MV1) and SUITE.num_classes == 1000 and SUITE.dataset_base == "imagenet"
    assert set(EXPECTED_UNIFIED) == set(methods.METHODS.module_dict)  # every method has its row


@pytest.mark.parametrize("recipe", ["unified", "paper"])
@pytest.mark.parametrize("pair", [R34_R18, R50_MV1], ids=lambda p: p.name)
@pytest.mark.parametrize("method", sorted(EXPECTED_UNIFIED))
def test_every_method_recipe_resolves(recipe, pair, method):
    resolved = SUITE.resolve(recipe, pair, method)
    batch, lr, expected = EXPECTED_UNIFIED[method]
    expected = {"type": method, **expected, **({"beta": EXPECTED_DKD_BETA[pair]} if method == "dkd" else {})}
    schedule = dataclasses.asdict(resolved.schedule)
    if recipe == "paper" and method == "ckd":
        assert schedule == dict(
            epochs=200, batch_size=512, lr=0.2, momentum=0.9, weight_decay=1e-4, kind="cosine", milestones=(), gamma=0.1
        )
        assert any("200 epochs" in note for note in resolved.notes)
    else:
        assert schedule == dict(STEP, batch_size=batch, lr=lr)
    assert resolved.method == expected
    assert resolved.name == recipe
    if method == "fitnet":
        assert any("not a reference recipe" in note for note in resolved.notes)
    # The method builds with these arguments and the pair's feature shapes at 224x224.
    shapes = {
        name: {"hint": (2, *TAPS_224[name][0]), "embedding": (2, TAPS_224[name][1])}
        for name in (pair.student, pair.teacher)
    }
    context = methods.DistillContext(
        num_classes=1000, num_data=20_000, student_shapes=shapes[pair.student], teacher_shapes=shapes[pair.teacher]
    )
    assert methods.build_method(resolved.method, context) is not None


# --------------------------------------------------------------------------- published numbers


def test_published_imagenet_numbers_map_to_zoo_names_and_give_a_delta(tmp_path):
    table = load_published()
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "kd")].top1 == pytest.approx(71.03)
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "dkd")].kind == "best"
    assert table[("imagenet", "resnet50_in1k", "mobilenetv1_in1k", "ce")].top1 == pytest.approx(68.87)
    assert table[("imagenet", "resnet34_in1k", "resnet18_in1k", "crd")].top1 == pytest.approx(71.17)
    assert table[("cifar100", "ResNet50", "MobileNetV2", "kd")].top1 == pytest.approx(67.35)  # CIFAR names untouched
    assert not [k for k in table if k[0] == "imagenet" and not k[1].endswith("_in1k")]

    for seed, last in enumerate((71.0, 71.4)):  # best epoch = last + 0.3: 71.3, 71.7 -> mean 71.5
        write(tmp_path, make_record("imagenet", "resnet34_in1k", "resnet18_in1k", "kd", seed, last, epochs=4))
    runs = load_records([tmp_path]).records
    best = next(
        t for t in build_suite_tables(runs, "imagenet", table, suite_pair_order("imagenet")) if t.statistic == "best"
    )
    cell = next(r for r in best.rows if r.method == "kd").cells[("resnet34_in1k", "resnet18_in1k")]
    assert cell.published.top1 == pytest.approx(71.03)
    assert cell.delta == pytest.approx(71.5 - 71.03)


# --------------------------------------------------------------------------- end to end


# The end-to-end runs: 2 train images a class (batch 3: 2 iterations an epoch) and 1 val image.
RUN_PER_CLASS_TRAIN, RUN_PER_CLASS_VAL, RUN_BATCH = 2, 1, 3
RUN_DATA = N_CLASSES * RUN_PER_CLASS_TRAIN


@pytest.fixture(scope="module")
def run_imagenet(tmp_path_factory) -> Path:
    return write_tiny_imagefolder(
        tmp_path_factory.mktemp("imagenet-runs"), N_CLASSES, RUN_PER_CLASS_TRAIN, RUN_PER_CLASS_VAL, (300, 260), seed=0
    )


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teachers") / "resnet18_in1k_vanilla" / "ckpt_epoch_240.pth"
    save_community_checkpoint(build_model("resnet18_in1k", SUITE.num_classes), path)
    return path


def tiny_spec(method: str, run_dir: Path, data_root: Path, teacher_checkpoint: Path, epochs: int = 1) -> RunSpec:
    """The real suite (1000-way heads; the tiny data's targets 0..2 are valid labels), its
    dataset config and preprocessor, resnet18_in1k as teacher and student, batch 3 (2 iterations an epoch)."""
    pair = Pair("resnet18_in1k", "resnet18_in1k")
    # The recipe of the suite's ResNet34→ResNet18 pair (DKD's beta is per pair), on a cheaper teacher.
    recipe = SUITE.resolve("unified", R34_R18, method).adjusted(epochs=epochs, batch_size=RUN_BATCH)
    if method in (
        "crd",
        "crd_kd",
    ):  # CRD needs K < N: 4 negatives of the 6 images (the sampler draws with replacement)
        recipe = dataclasses.replace(recipe, method={**recipe.method, "nce_k": 4})
    return RunSpec(
        suite=SUITE,
        pair=pair,
        method=method,
        recipe=recipe,
        seed=0,
        run_dir=run_dir,
        data_root=str(data_root),
        teacher_checkpoint=str(teacher_checkpoint),
        teacher_checkpoint_sha256="test",
        num_workers=0,
    )


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "crd", "crd_kd", "ckd", "fitnet"])
def test_one_epoch_through_the_mmengine_runner(method, run_imagenet, teacher_checkpoint, tmp_path):
    """Every method: 2 training iterations and one validation through MMEngine's Runner."""
    spec = tiny_spec(method, tmp_path / method, run_imagenet, teacher_checkpoint)
    num_data = RUN_DATA
    cfg = build_config(spec, num_data)
    assert cfg.train_dataloader.dataset.type == "ImageNetDistill" and cfg.train_dataloader.batch_size == RUN_BATCH
    assert cfg.train_dataloader.dataset.get("contrast_k") == (4 if method.startswith("crd") else None)
    record = execute(spec, num_data, new_record(spec), resume=False, say=lambda _l: None)
    assert record.status == "completed", record.failure
    assert [p.epoch for p in record.curve] == [1] and record.runtime["measured_iterations"] >= 1
    assert 0 <= record.last_top1 <= 100
    on_disk = read_record(tmp_path / method / "record.json")
    assert on_disk.status == "completed" and on_disk.suite == "imagenet"
    student = build_model("resnet18_in1k", SUITE.num_classes)
    student.load_state_dict(torch.load(tmp_path / method / STUDENT_EXPORT, weights_only=True)["model"], strict=True)


def test_an_interrupted_imagenet_run_resumes_to_the_uninterrupted_record(
    run_imagenet, teacher_checkpoint, tmp_path, monkeypatch
):
    from benchmark import faults

    num_data = RUN_DATA
    straight = tiny_spec("kd", tmp_path / "straight", run_imagenet, teacher_checkpoint, epochs=2)
    reference = execute(straight, num_data, new_record(straight), resume=False, say=lambda _l: None)
    spec = tiny_spec("kd", tmp_path / "broken", run_imagenet, teacher_checkpoint, epochs=2)

    def interrupt(point, **context):
        if point == "after_checkpoint" and context.get("epoch") == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "fire", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, num_data, new_record(spec), resume=False, say=lambda _l: None)
    monkeypatch.undo()
    resumed = execute(
        spec, num_data, read_record(tmp_path / "broken" / "record.json"), resume=True, say=lambda _l: None
    )
    # Same process, same operations on the same inputs (every epoch reseeds): exact.
    assert [(p.epoch, p.top1, p.top5, p.loss) for p in resumed.curve] == [
        (p.epoch, p.top1, p.top5, p.loss) for p in reference.curve
    ]
    a = torch.load(tmp_path / "straight" / STUDENT_EXPORT, weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / STUDENT_EXPORT, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- teachers from files (TeacherStage) --------------------------------------------------------


def _stage(tmp_path, **overrides):
    from benchmark.suites import get_suite
    from benchmark.sweep.options import SweepOptions
    from benchmark.sweep.teachers import TeacherStage

    args = SweepOptions(
        suite="imagenet",
        methods="kd",
        work_dir=str(tmp_path / "w"),
        device="cpu",
        data_root=str(tmp_path / "data"),
        num_workers=0,
    ).replace(**overrides)
    return TeacherStage(get_suite("imagenet"), "unified", args)


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict"])
def test_torchvision_teacher_files_are_found_and_load_strictly(layout, tmp_path, monkeypatch):
    import torchvision

    from benchmark.models import build_model
    from benchmark.store.checkpoints import load_community_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    state = torchvision.models.resnet34(weights=None).state_dict()
    payload = {"plain": state, "model": {"model": state}, "state_dict": {"state_dict": state}}[layout]
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(payload, hub / "resnet34-b627a593.pth")  # torchvision's own file name, in its cache
    stage = _stage(tmp_path)
    assert stage.community_path("resnet34_in1k") == hub / "resnet34-b627a593.pth"
    model = build_model("resnet34_in1k", 1000)
    load_community_checkpoint(model, stage.community_path("resnet34_in1k"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # --teachers DIR/<name>.pth is preferred over the cache
    (tmp_path / "t").mkdir()
    torch.save(state, tmp_path / "t" / "resnet34_in1k.pth")
    assert (
        _stage(tmp_path, teachers=str(tmp_path / "t")).community_path("resnet34_in1k")
        == tmp_path / "t" / "resnet34_in1k.pth"
    )


def test_imagenet_teachers_are_never_trained_unless_asked(tmp_path, monkeypatch):
    from benchmark.errors import UsageError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(
        UsageError,
        match=r"2 teacher file\(s\) not found: .*resnet34_in1k\.pth or .*resnet34-b627a593\.pth.*--train-teachers",
    ):
        _stage(tmp_path).check_teacher_files(["resnet34_in1k", "resnet50_in1k"])
    _stage(tmp_path, train_teachers=True).check_teacher_files(["resnet34_in1k"])  # asked for: allowed
