"""Tests of the reproduction verdicts (benchmark/report/verdict.py) and of their place in the tables.

Every expected verdict below is worked by hand from the rule (the module docstring); only the
t quantiles come from scipy. Notation: d = our mean − published, s = our seed std (ddof=1),
n = our seeds, m = published runs, SE = s·√(1/n + 1/m), ν = n − 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import t as student_t

from benchmark.aggregate import aggregate
from benchmark.report import synthetic
from benchmark.report.load import load_records
from benchmark.report.published import PUBLISHED_CSV, load_published
from benchmark.report.synthetic import make_record
from benchmark.report.tables import METHOD_ORDER, STATISTICS, build_suite_tables, suite_pair_order
from benchmark.report.verdict import (
    ABOVE,
    BELOW,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    REPRODUCED,
    TOO_FEW,
    benjamini_hochberg,
    margin_for,
    p_value,
    seeds_needed,
    standard_error,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "records"

# Five DKD runs of resnet32x4→resnet8x4 on CIFAR-100 posted by a user in megvii-research/mdistiller
# issue #7 ("Can't reproduce the accuracy.", 2022-05-01): 76.20, 75.80, 75.89, 75.85, 76.15, against
# the paper's 76.32 (best epoch, mean of 5 runs). The issue does not say which epoch the user read.
ISSUE7 = [76.20, 75.80, 75.89, 75.85, 76.15]


def _q(p: float, df: float) -> float:
    return float(student_t.ppf(p, df))


# --------------------------------------------------------------------------- hand-computed cases


def test_issue7_dkd_seeds_are_below_the_paper():
    """mean 75.978, d = −0.342, s = √(0.13468/4) = 0.18349, SE = s·√(1/5 + 1/5) = 0.11605, ν = 4.

    95%: −0.342 ± 2.7764·0.11605 = [−0.6642, −0.0198]: excludes 0 below. 90%: ± 2.1318·SE =
    [−0.5894, −0.0946]: not inside ±0.5, so not reproduced. t = −2.947, p = 0.042.
    """
    mean = sum(ISSUE7) / 5
    s = math.sqrt(sum((v - mean) ** 2 for v in ISSUE7) / 4)
    assert mean == pytest.approx(75.978) and s == pytest.approx(0.18349, abs=1e-5)
    v = verdict(mean - 76.32, s, 5, m=5, margin=0.5)
    assert v.label == BELOW and v.text == "below" and v.seeds_needed is None
    assert v.se == pytest.approx(0.11605, abs=1e-5) and v.df == 4
    assert v.interval == pytest.approx((-0.6642, -0.0198), abs=1e-4)
    assert v.interval90 == pytest.approx((-0.5894, -0.0946), abs=1e-4)
    assert v.p_value == pytest.approx(2 * student_t.sf(2.947, 4), abs=2e-4) and 0.04 < v.p_value < 0.045
    # Against a single published run (m = 1) the same seeds are inconclusive: SE = s·√1.2 = 0.2010,
    # 95% = −0.342 ± 2.7764·0.2010 = [−0.900, 0.216]; 2.8·s/√1 = 0.514 > 0.342: never.
    single = verdict(mean - 76.32, s, 5, m=1)
    assert single.label == INCONCLUSIVE and single.seeds_needed is None and single.text == "inconclusive (never)"


def test_reproduced():
    """d = 0.05, s = 0.2, n = 5, m = 5: SE = 0.2·√0.4 = 0.12649,
    90% = 0.05 ± 2.1318·SE = [−0.2197, 0.3197] ⊂ ±0.5."""
    v = verdict(0.05, 0.2, 5, m=5, margin=0.5)
    assert v.label == REPRODUCED and v.text == "reproduced"
    assert v.interval90 == pytest.approx(
        (0.05 - _q(0.95, 4) * 0.2 * math.sqrt(0.4), 0.05 + _q(0.95, 4) * 0.2 * math.sqrt(0.4))
    )
    assert v.interval90 == pytest.approx((-0.2197, 0.3197), abs=1e-4)
    # The same numbers with ImageNet's margin 0.3: 0.3197 ≥ 0.3, not reproduced; 95% contains 0: inconclusive.
    assert verdict(0.05, 0.2, 5, m=5, margin=0.3).label == INCONCLUSIVE


def test_above():
    """d = 1.02, s = 0.1, n = 3, m = 1: SE = 0.1·√(4/3) = 0.11547,
    95% = 1.02 ± 4.3027·SE = [0.5232, 1.5168] > 0."""
    v = verdict(1.02, 0.1, 3, m=1)
    assert v.label == ABOVE
    assert v.interval == pytest.approx((0.5232, 1.5168), abs=1e-4)


def test_inconclusive_with_the_seeds_needed():
    """d = −0.5, s = 0.3, n = 3, m = 5: SE = 0.3·√(1/3 + 1/5) = 0.21909, 95% = −0.5 ± 4.3027·SE ∋ 0.

    k: never would need 0.5 ≤ 2.8·0.3/√5 = 0.376, no. n = 11: 0.5/(0.3·√(1/11 + 0.2)) = 3.090 <
    t(0.975, 10) + t(0.80, 10) = 2.228 + 0.879 = 3.107; n = 12: 3.131 ≥ 2.201 + 0.876 = 3.077. So k = 12.
    """
    v = verdict(-0.5, 0.3, 3, m=5)
    assert v.label == INCONCLUSIVE and v.seeds_needed == 12 and v.text == "inconclusive (n ≥ 12)"
    lhs = lambda n: 0.5 / (0.3 * math.sqrt(1 / n + 1 / 5))  # noqa: E731
    rhs = lambda n: _q(0.975, n - 1) + _q(0.80, n - 1)  # noqa: E731
    assert lhs(11) < rhs(11) and lhs(12) >= rhs(12)
    assert v.seeds_needed_text == "12"


def test_inconclusive_never():
    """d = −0.2, s = 0.3, n = 3, m = 1: |d| = 0.2 ≤ (1.960 + 0.842)·0.3/√1 = 0.8405: no number of seeds
    decides (95% = −0.2 ± 4.3027·0.3·√(4/3) ∋ 0)."""
    v = verdict(-0.2, 0.3, 3, m=1)
    assert v.label == INCONCLUSIVE and v.seeds_needed is None
    assert v.text == "inconclusive (never)" and v.seeds_needed_text == "never"
    # Just past the limit a finite (large) k exists; it is found beyond the first scan by bisection.
    d = 0.8405 * 1.002
    k = seeds_needed(d, 0.3, 1)
    assert k > 512 and seeds_needed(0.8405 * 1.02, 0.3, 1) < 512
    lhs = lambda n: d / (0.3 * math.sqrt(1 / n + 1))  # noqa: E731
    assert lhs(k) >= _q(0.975, k - 1) + _q(0.80, k - 1) and lhs(k - 1) < _q(0.975, k - 2) + _q(0.80, k - 2)


def test_one_seed_is_too_few():
    assert verdict(-3.0, math.nan, 1, m=5).label == TOO_FEW
    assert verdict(-3.0, math.nan, 1).text == "too few seeds" and verdict(-3.0, math.nan, 1).p_value is None


def test_welch_with_a_published_std():
    """s = 0.2, n = 4, published s_p = 0.3 over m = 5, d = −0.5.

    a = s²/n = 0.01, b = s_p²/m = 0.018, SE = √0.028 = 0.16733, ν = 0.028²/(0.01²/3 + 0.018²/4) = 6.857.
    95% = −0.5 ± t(0.975, 6.857)·SE = −0.5 ± 2.3717·0.16733 = [−0.8969, −0.1031]: below.
    """
    se, df = standard_error(0.2, 4, 5, published_std=0.3)
    assert se == pytest.approx(math.sqrt(0.028)) and df == pytest.approx(0.000784 / (0.0001 / 3 + 0.000324 / 4))
    assert df == pytest.approx(6.857, abs=1e-3)
    v = verdict(-0.5, 0.2, 4, m=5, published_std=0.3)
    assert v.label == BELOW and v.df == pytest.approx(df)
    assert v.interval == pytest.approx((-0.5 - _q(0.975, df) * se, -0.5 + _q(0.975, df) * se))
    assert v.interval == pytest.approx((-0.8969, -0.1031), abs=1e-3)
    assert v.p_value == pytest.approx(2 * student_t.sf(0.5 / se, df))
    # Without the published std the Student form applies: SE = 0.2·√(1/4 + 1/5) = 0.13416, ν = 3.
    plain = verdict(-0.5, 0.2, 4, m=5)
    assert plain.df == 3 and plain.se == pytest.approx(0.2 * math.sqrt(0.45))
    # A std without m ≥ 2 runs cannot be used (no Welch df): Student form.
    assert verdict(-0.5, 0.2, 4, m=1, published_std=0.3).df == 3
    # Welch's never limit: |d| ≤ (t(0.975, 4) + t(0.80, 4))·0.3/√5 = 0.4987 (ν → m − 1 as n → ∞).
    assert seeds_needed(-0.49, 0.2, 5, published_std=0.3) is None
    k = seeds_needed(-0.6, 0.2, 5, published_std=0.3)
    assert k is not None and 2 <= k


def test_p_value_and_zero_spread():
    assert p_value(0.0, 0.0, 3.0) == 1.0 and p_value(0.1, 0.0, 3.0) == 0.0
    # No spread: the intervals are the point d. Inside the margin that is reproduced (tested first), outside below.
    assert verdict(-0.1, 0.0, 3).label == REPRODUCED and verdict(-0.6, 0.0, 3).label == BELOW
    assert p_value(-0.342, 0.11605, 4.0) == pytest.approx(p_value(0.342, 0.11605, 4.0))


def test_benjamini_hochberg():
    """p = (0.01, 0.04, 0.03, 0.5): sorted 0.01, 0.03, 0.04, 0.5 → ×4/1, ×4/2, ×4/3, ×4/4
    = 0.04, 0.06, 0.0533, 0.5;
    monotone from the top: 0.04, 0.0533, 0.0533, 0.5."""
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert benjamini_hochberg([]) == [] and benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])


# --------------------------------------------------------------------------- the published numbers


def test_every_published_row_of_a_registered_pair_matches_a_table():
    """Each CSV row of a registered suite and pair can match a cell of the last or best table; the rows
    that match none are listed in the failure message (none today: the five ImageNet rows whose
    statistic is not stated are compared with the last-epoch table)."""
    from benchmark.suites import get_suite

    frame = pd.read_csv(PUBLISHED_CSV, dtype=str, keep_default_na=False)
    table = load_published()
    unmatched = []
    for row in frame.itertuples(index=False):
        key = next(
            k
            for k, v in table.items()
            if k[0] == row.suite
            and v.top1 == float(row.top1)
            and v.source == row.source.strip()
            and v.statistic == row.statistic.strip()
            and k[3] == {"student": "ce"}.get(row.method, row.method)
            and (row.teacher, row.student) in (k[1:3], tuple(_paper_names(row.suite, k[1:3])))
        )
        pairs = {(p.teacher, p.student) for p in get_suite(row.suite).pairs}
        pub = table[key]
        if key[1:3] not in pairs or key[3] not in METHOD_ORDER or pub.kind not in STATISTICS:
            unmatched.append(f"{row.suite},{row.teacher},{row.student},{row.method}: {row.statistic}")
    assert unmatched == [], "published rows that match no table cell:\n" + "\n".join(unmatched)
    unstated = [k for k, v in table.items() if not v.stated]
    assert len(unstated) == 5 and all(k[0] == "imagenet" and table[k].kind == "last" for k in unstated)


def _paper_names(suite: str, pair: tuple[str, str]) -> list[str]:
    from benchmark.report.published import _MODEL_MAP

    back = {v: k for k, v in _MODEL_MAP.get(suite, {}).items()}
    return [back.get(name, name) for name in pair]


def test_runs_and_std_columns():
    table = load_published()
    dkd = table[("cifar100", "resnet32x4", "resnet8x4", "dkd")]
    assert (dkd.runs, dkd.std) == (5, None) and "issue #42" in dkd.source
    assert all(v.runs == 5 for k, v in table.items() if k[0] == "cifar100" and k[3] == "dkd")
    # Not stated by a source: left empty (m = 1 in the verdict), never filled in.
    assert table[("cifar100", "resnet32x4", "resnet8x4", "crd")].runs is None
    assert all(v.std is None for v in table.values())


# --------------------------------------------------------------------------- hand-made records end to end

COMMUNITY = {"teacher_source": "community"}
# (pair, method, last-epoch seeds, table, expected verdict in that table); published numbers from the CSV.
CASES = [
    # DKD resnet32x4→resnet8x4: the issue #7 seeds at the best epoch vs 76.32 (m = 5): below.
    (("resnet32x4", "resnet8x4"), "dkd", ISSUE7, "best", "below"),
    # KD resnet56→resnet20 vs 70.66 (m = 1): mean 70.71, d = 0.05, s = 0.0791, SE = s·√1.2 = 0.0866,
    # 90% = 0.05 ± 2.1318·0.0866 = [−0.135, 0.235] ⊂ ±0.5: reproduced.
    (("resnet56", "resnet20"), "kd", [70.61, 70.71, 70.81, 70.66, 70.76], "last", "reproduced"),
    # CRD wrn_40_2→wrn_16_2 vs 75.48: mean 76.50, d = 1.02, s = 0.1: above (test_above).
    (("wrn_40_2", "wrn_16_2"), "crd", [76.40, 76.60, 76.50], "last", "above"),
    # KD vgg13→vgg8 vs 72.98: mean 71.98, d = −1.00, s = 0.3, n = 3, m = 1: SE = 0.3464,
    # 95% = −1 ± 4.3027·0.3464 ∋ 0; k: n = 9: 1/(0.3·√(10/9)) = 3.162 < 2.306 + 0.889 = 3.195,
    # n = 10: 3.178 ≥ 2.262 + 0.883 = 3.145: inconclusive (n ≥ 10).
    (("vgg13", "vgg8"), "kd", [71.68, 72.28, 71.98], "last", "inconclusive (n ≥ 10)"),
    # FitNet resnet110→resnet32 vs 71.06 with one seed: too few seeds.
    (("resnet110", "resnet32"), "fitnet", [71.00], "last", "too few seeds"),
]


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdicts")
    for pair, method, seeds, _, _ in CASES:
        for seed, value in enumerate(seeds):  # bump = 0: best epoch = last epoch = the value
            synthetic.write(
                root / "w",
                make_record("cifar100", *pair, method, seed, value, bump=0.0, teacher_top1=75.0, extra=COMMUNITY),
            )
    # A § cell: KD on resnet110→resnet20 with a teacher that is not the community one.
    for seed, value in enumerate([70.1, 70.3]):
        synthetic.write(
            root / "w",
            make_record(
                "cifar100",
                "resnet110",
                "resnet20",
                "kd",
                seed,
                value,
                teacher_top1=74.0,
                extra={"teacher_source": "trained"},
            ),
        )
    # A teacher row: never a verdict.
    synthetic.write(root / "w", make_record("cifar100", "vgg13", "vgg13", "teacher", 0, 74.6, extra=COMMUNITY))
    aggregate([root / "w"], root / "t", root / "r")
    return root


def _cell(frame: pd.DataFrame, pair, method: str) -> pd.Series:
    sel = frame[(frame["teacher"] == pair[0]) & (frame["student"] == pair[1]) & (frame["method"] == method)]
    assert len(sel) == 1
    return sel.iloc[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{c[0][1]}" for c in CASES])
def test_handmade_records_get_their_verdict_in_csv_and_markdown(handmade, case):
    pair, method, seeds, stat, expected = case
    frame = pd.read_csv(handmade / "t" / f"cifar100_{stat}.csv", keep_default_na=False, dtype=str)
    row = _cell(frame, pair, method)
    assert row["verdict"] == expected.split(" (")[0]
    if expected.startswith(INCONCLUSIVE):
        assert row["seeds_needed"] == "10"
    md = (handmade / "t" / f"cifar100_{stat}.md").read_text()
    verdict_block = md.split("Verdict vs published")[1].split("Notes:")[0]
    line = next(li for li in verdict_block.splitlines() if li.startswith(f"| Verdict {_label(method)} "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    column = _columns(md).index(f"{pair[0]}→{pair[1]}")
    assert cells[column] == expected
    tex = (handmade / "t" / f"cifar100_{stat}.tex").read_text()
    assert "Verdict vs.\\ published" in tex


def _label(method: str) -> str:
    return {"kd": "KD", "crd": "CRD", "dkd": "DKD", "fitnet": "FitNet"}[method]


def _columns(md: str) -> list[str]:
    header = next(li for li in md.splitlines() if li.startswith("| Method"))
    return [c.strip() for c in header.strip("|").split("|")]


def test_section_and_teacher_cells_get_a_dash(handmade):
    last = pd.read_csv(handmade / "t" / "cifar100_last.csv", keep_default_na=False, dtype=str)
    section = _cell(last, ("resnet110", "resnet20"), "kd")
    assert section["delta_comparable"] == "False" and section["verdict"] == "" and section["p_value"] == ""
    teacher = _cell(last, ("vgg13", "vgg8"), "teacher")
    assert teacher["delta"] != "" and teacher["verdict"] == ""
    md = (handmade / "t" / "cifar100_last.md").read_text()
    block = md.split("Verdict vs published")[1].split("Notes:")[0]
    assert next(li for li in block.splitlines() if li.startswith("| Verdict Teacher")).count(NOT_APPLICABLE) >= 1
    # p_adjusted: Benjamini–Hochberg over the table's tested verdicts.
    tested = last[last["p_value"] != ""]
    adjusted = benjamini_hochberg([float(p) for p in tested["p_value"]])
    # From the CSV's 4-decimal p-values: each scaled by at most N/i = 3, so within 3 × 5e-5.
    assert [float(p) for p in tested["p_adjusted"]] == pytest.approx(adjusted, abs=2e-4)
    assert tested["verdict"].tolist() == ["reproduced", "inconclusive", "above"]


def test_footnote_and_index(handmade):
    md = (handmade / "t" / "cifar100_last.md").read_text()
    assert "inside ±0.5 pp" in md and "TOST" in md
    # Tested in the last table: KD resnet56 (reproduced), CRD (above), KD vgg13 (inconclusive) -> 3.
    assert "With 3 verdict(s) tested here, about 0.15 would read below/above by chance alone" in md
    index = (handmade / "r" / "index.md").read_text()
    summary = index.split("Verdicts vs published")[1].split("\n## ")[0]
    rows = [[c.strip() for c in li.strip("|").split("|")] for li in summary.splitlines() if li.startswith("| cifar")]
    # suite, table, compared, reproduced, below, above, inconclusive, too few seeds, seeds needed
    assert rows == [
        ["cifar100", "last", "4", "1", "0", "1", "1", "1", "n ≥ 10"],
        ["cifar100", "best", "1", "0", "1", "0", "0", "0", "–"],
    ]


def test_best_minus_last_row(handmade):
    best = (handmade / "t" / "cifar100_best.md").read_text()
    assert "Best − last epoch (paired over seeds):" in best
    assert "+0.00 ± 0.00 (5)" in best  # bump = 0: best = last for every run
    assert "Best − last epoch" not in (handmade / "t" / "cifar100_last.md").read_text()


def test_fixture_verdict_numbers_are_robust_to_the_machine():
    """As test_aggregate's golden robustness check, for the printed verdict numbers: p-values and
    best − last gaps far from a 4-decimal rounding boundary, intervals far from the margins and 0."""
    published = load_published()
    loaded = load_records([FIXTURES]).records
    for suite in sorted(set(loaded["suite"])):
        runs = loaded[(loaded["suite"] == suite) & ~loaded["ablation"].astype(bool)]
        for table in build_suite_tables(runs, suite, published, suite_pair_order(suite)):
            for row in table.rows:
                for cell in row.cells.values():
                    values = [cell.p_adjusted]
                    if cell.best_minus_last:
                        values.append(sum(cell.best_minus_last) / len(cell.best_minus_last))
                    v = cell.verdict
                    if v is not None and v.p_value is not None:
                        values.append(v.p_value)
                        for bound in (*v.interval, *v.interval90):
                            assert min(abs(bound), abs(abs(bound) - margin_for(suite))) > 1e-6, (row.label, bound)
                    for value in values:
                        if value is None or not math.isfinite(value) or value == 0.0:
                            continue
                        for decimals in (2, 4):
                            scaled = abs(value) * 10**decimals
                            assert abs(scaled - math.floor(scaled) - 0.5) > 1e-6, (suite, row.label, value)


def test_imagenet_margin_and_unstated_statistic(tmp_path):
    """ImageNet: margin 0.3 (provisional); the torchvision Student and CRD's ImageNet number (statistic not
    stated) are compared in the last-epoch table, and the table says so.

    CE resnet34→resnet18 vs torchvision's 69.76: mean 69.80, d = 0.04, s = 0.1, n = 3, m = 1:
    SE = 0.1·√(4/3) = 0.11547, 90% = 0.04 ± 2.9200·SE = [−0.297, 0.377]: not inside ±0.3 (it would be
    inside CIFAR-100's ±0.5); 95% ∋ 0; never (0.04 ≤ 2.8·0.1): inconclusive (never).
    """
    pair = ("resnet34_in1k", "resnet18_in1k")
    for method, seeds in (("ce", [69.70, 69.80, 69.90]), ("crd", [71.10, 71.20])):
        for seed, value in enumerate(seeds):
            synthetic.write(
                tmp_path / "w",
                make_record("imagenet", *pair, method, seed, value, bump=0.0, teacher_top1=73.31, extra=COMMUNITY),
            )
    aggregate([tmp_path / "w"], tmp_path / "t", tmp_path / "r")
    last = pd.read_csv(tmp_path / "t" / "imagenet_last.csv", keep_default_na=False, dtype=str)
    assert _cell(last, pair, "ce")["published"] == "69.7600" and _cell(last, pair, "ce")["verdict"] == INCONCLUSIVE
    assert _cell(last, pair, "ce")["seeds_needed"] == "never"
    assert _cell(last, pair, "crd")["published"] == "71.1700"
    assert verdict(0.04, 0.1, 3, m=1, margin=0.5).label == REPRODUCED
    md = (tmp_path / "t" / "imagenet_last.md").read_text()
    assert "inside ±0.3 pp" in md and "provisional" in md
    assert "statistic is neither last nor best epoch" in md
