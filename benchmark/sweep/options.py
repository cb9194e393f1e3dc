"""The command line of a sweep: the one parser (``benchmark/run.py`` and the cluster jobs use it).

Rule: argparse lives here and in the scripts only; everything below reads the parsed options.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from benchmark.errors import UsageError
from benchmark.suites import suite_names

DESCRIPTION = """Run a benchmark sweep: teachers, then every (pair, method, seed), then the tables.

    python benchmark/run.py --suite digits --methods kd,fitnet,crd,dkd,ckd
    python benchmark/run.py --suite cifar100 --methods ckd,crd,dkd --data-root data --teachers teachers
    python benchmark/run.py --suite cifar100 --methods ckd,crd,dkd --dry-run

Every run has its own directory under ``<work-dir>/<suite>/<recipe>/<pair>/<method>/seed<k>``
with its MMEngine config, logs, checkpoints, the exported student and ``record.json``.
Completed runs are skipped, interrupted ones resume from their last checkpoint, a run
whose loss becomes NaN is recorded as failed; nothing is overwritten silently.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark/run.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", required=True, help=f"benchmark suite ({', '.join(suite_names())})")
    parser.add_argument("--methods", required=True, help="comma list of registered methods, e.g. kd,crd,dkd,ckd")
    parser.add_argument("--pairs", help="comma list of teacher-student pairs (default: all pairs of the suite)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per (pair, method): 0..N-1 (default 3)")
    parser.add_argument("--recipe", help="recipe name (default: the suite's, 'unified')")
    parser.add_argument(
        "--epochs", type=int, help="override the recipe's epochs (milestones scale with it); for smoke runs"
    )
    parser.add_argument(
        "--batch-sizes", help="batch-size ablation: comma list; lr follows the linear rule from the recipe's batch"
    )
    parser.add_argument(
        "--data-root",
        default="data",
        help="folder holding the dataset: cifar-100-python/ for cifar100; train/ and val/ (ImageFolder) for imagenet",
    )
    parser.add_argument(
        "--download", action="store_true", help="download the dataset into --data-root if it is missing"
    )
    parser.add_argument(
        "--teachers",
        help="folder of teacher weight files: CIFAR <name>_vanilla/ckpt_epoch_240.pth (community layout); "
        "ImageNet <name>.pth or torchvision's V1 files (resnet34-b627a593.pth, resnet50-0676ba61.pth)",
    )
    parser.add_argument(
        "--train-teachers",
        action="store_true",
        help="train the teachers that no file provides (default only where no --teachers is given on CIFAR/digits)",
    )
    parser.add_argument("--work-dir", default="work_dirs", help="where runs are kept (default work_dirs/)")
    parser.add_argument("--tables", default="tables", help="where tables are written (default tables/)")
    parser.add_argument(
        "--reports", default="reports", help="where plots and the report are written (default reports/)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="do not add the student-alone (ce) runs")
    parser.add_argument("--no-aggregate", action="store_true", help="do not regenerate tables and reports at the end")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue interrupted runs from their last checkpoint (default); --no-resume refuses to touch them",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the runs recorded as failed (their old record is kept as record.failed.json)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--num-workers", type=int, help="dataloader workers (default: the dataset config's)")
    parser.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms (slower)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="with --dry-run (implied): also print each planned run's complete MMEngine config, "
        "without reading data or teacher files",
    )
    parser.add_argument("--verbose", action="store_true", help="per-epoch progress lines and MMEngine's own logs")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (MMEngine's AmpOptimWrapper on GPU); the references ran fp32. Recorded; its own variant",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format for both networks and the inputs. Recorded; its own variant",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log every loss term, lr and top-1 to TensorBoard (needs the tensorboard package)",
    )

    scale = parser.add_argument_group("scaling out")
    scale.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per run (torch DDP via MMEngine; gloo on CPU, nccl on GPU); the batch stays global",
    )
    scale.add_argument(
        "--sync-bn", action="store_true", help="with --nproc > 1: SyncBatchNorm in the student (recorded)"
    )
    scale.add_argument(
        "--ckd-contrast",
        choices=("global", "local"),
        default="global",
        help="with --nproc > 1: CKD negatives from the global batch (default) or only the process's batch, as DataParallel did",
    )
    scale.add_argument(
        "--no-cohort",
        action="store_true",
        help="train every run alone; by default the methods of one (pair, seed) train as a lockstep cohort "
        "in one process (one data stream, one teacher forward per batch; each run's numbers unchanged)",
    )
    scale.add_argument(
        "--cohort-size",
        type=int,
        default=None,
        metavar="N",
        help="at most N runs per cohort (memory: N students and optimizers at once; default all methods)",
    )
    scale.add_argument(
        "--cluster", choices=("local", "slurm"), help="submit one job per run through submitit instead of running here"
    )
    scale.add_argument(
        "--wait", action="store_true", help="with --cluster: block with a live progress line, then aggregate"
    )
    scale.add_argument(
        "--status", action="store_true", help="list every planned run's state from the run directories alone, and exit"
    )
    scale.add_argument("--partition", help="Slurm partition")
    scale.add_argument(
        "--gpus-per-run", type=int, default=None, help="GPUs per run (Slurm; default --nproc on GPU, 0 on CPU)"
    )
    scale.add_argument("--cpus-per-run", type=int, default=None, help="CPUs per run (Slurm/local)")
    scale.add_argument(
        "--time-limit", type=int, default=None, help="minutes per job (Slurm); the job requeues itself before it"
    )
    scale.add_argument("--mem-gb", type=int, default=None, help="memory per job in GB (Slurm)")
    scale.add_argument(
        "--array-parallelism", type=int, default=None, help="at most this many jobs of the array at once"
    )
    scale.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other Slurm parameter for the jobs, e.g. --slurm account=abc --slurm qos=high --slurm constraint=a100",
    )
    return parser


@dataclass(frozen=True)
class SweepOptions:
    """A parsed command line: the whole description of a sweep, typed and immutable.

    Cluster jobs receive it as it is (submitit pickles it); ``to_argv`` is for printed hints.
    """

    suite: str
    methods: str
    pairs: str | None = None
    seeds: int = 3
    recipe: str | None = None
    epochs: int | None = None
    batch_sizes: str | None = None
    data_root: str = "data"
    download: bool = False
    teachers: str | None = None
    train_teachers: bool = False
    work_dir: str = "work_dirs"
    tables: str = "tables"
    reports: str = "reports"
    no_baseline: bool = False
    no_aggregate: bool = False
    resume: bool = True
    retry_failed: bool = False
    device: str | None = None
    num_workers: int | None = None
    deterministic: bool = False
    dry_run: bool = False
    print_config: bool = False
    verbose: bool = False
    amp: bool = False
    channels_last: bool = False
    tensorboard: bool = False
    nproc: int = 1
    no_cohort: bool = False
    cohort_size: int | None = None
    sync_bn: bool = False
    ckd_contrast: str = "global"
    cluster: str | None = None
    wait: bool = False
    status: bool = False
    partition: str | None = None
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    time_limit: int | None = None
    mem_gb: int | None = None
    array_parallelism: int | None = None
    slurm: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> "SweepOptions":
        return dataclasses.replace(self, **changes)

    def to_argv(self, **overrides: Any) -> list[str]:
        """The argv that parses back to these options (with ``overrides``); defaults are left out.

        Checked by parsing it again, so a printed command means exactly this sweep.
        """
        values = dataclasses.asdict(self.replace(**overrides))
        defaults = dataclasses.asdict(parse_args(["--suite", self.suite, "--methods", self.methods]))
        argv: list[str] = []
        for key, value in values.items():
            flag = "--" + key.replace("_", "-")
            if (key not in ("suite", "methods") and value == defaults[key]) or value is None:
                continue
            if value is True:
                argv.append(flag)
            elif value is False:
                argv.append("--no-" + key.replace("_", "-"))  # BooleanOptionalAction (--resume)
            elif isinstance(value, (list, tuple)):
                argv += [f"{flag}={item}" for item in value]
            else:
                argv.append(f"{flag}={value}")
        try:
            parsed = dataclasses.asdict(parse_args(argv))
        except SystemExit:
            raise UsageError(f"cannot write this command line out: {shlex.join(argv)}") from None
        differ = sorted(key for key in values if parsed[key] != values[key])
        if differ:
            raise UsageError(f"cannot write option(s) {', '.join(differ)} out as a command line")
        return argv


def parse_args(argv: list[str] | None) -> SweepOptions:
    """The sweep that ``argv`` describes (``--print-config`` implies ``--dry-run``)."""
    values = vars(build_parser().parse_args(argv))
    values["slurm"] = tuple(values["slurm"])
    values["dry_run"] = values["dry_run"] or values["print_config"]
    return SweepOptions(**values)


__all__ = ["DESCRIPTION", "SweepOptions", "build_parser", "parse_args"]
