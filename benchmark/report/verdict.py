"""Reproduction verdicts: does our mean over seeds agree with a published number?

A Δ = ours − published without an uncertainty cannot tell a failed reproduction from
noise. For every cell with a comparable published number this module gives a verdict
(issue 20 of the tracker). With d = our mean − published, s our seed std (ddof=1),
n our seeds and m the published runs (1 when the source does not state it):

    SE = s·√(1/n + 1/m),  t quantiles on n − 1 degrees of freedom.

The published side is assumed to have our seed-to-seed spread. When the source states
its own std s_p over m ≥ 2 runs, Welch's form is used instead:

    SE = √(s²/n + s_p²/m),  ν = SE⁴ / ((s²/n)²/(n − 1) + (s_p²/m)²/(m − 1))  (Welch–Satterthwaite).

Labels, tested in this order:

- ``reproduced``: the 90% interval d ± t(0.95, ν)·SE lies inside ±margin, i.e. both
  one-sided tests of TOST reject at 5% (Schuirmann 1987, https://doi.org/10.1007/BF01068419;
  Lakens 2017, https://doi.org/10.1177/1948550617697177);
- ``below`` / ``above``: the 95% interval d ± t(0.975, ν)·SE excludes 0 on that side;
- ``inconclusive``, with ``seeds_needed`` k: the smallest n with
  |d| / SE(n) ≥ t(0.975, ν(n)) + t(0.80, ν(n)) (a two-sided 5% test with 80% power at the
  observed d), or never (None) when even n → ∞ cannot: |d| ≤ (z(0.975) + z(0.80))·s/√m ≈ 2.8·s/√m;
- ``too few seeds`` when n < 2 (no s).

The margins are per suite (pp of top-1): 0.5 on CIFAR-100, 0.3 on ImageNet (provisional).
The table rendering of the verdicts (a line per method under the Δ block, the footnote,
the tidy CSV's columns) and the best − last block of the best-epoch table are here too,
so that ``tables.py`` only calls into this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from benchmark.store.records import TEACHER_ROW

if TYPE_CHECKING:  # build.py and render.py import this module: no runtime import back
    from .model import Cell, Row, SuiteTable
    from .model import PairKey as Pair

REPRODUCED, BELOW, ABOVE, INCONCLUSIVE, TOO_FEW = "reproduced", "below", "above", "inconclusive", "too few seeds"
NOT_APPLICABLE = "–"  # teacher rows and § cells (another teacher than the published one)
NEVER = "never"
LABELS = (REPRODUCED, BELOW, ABOVE, INCONCLUSIVE, TOO_FEW)
ALPHA = 0.05  # two-sided level of below / above; TOST at the same level uses the 90% interval
POWER = 0.80  # of the seeds_needed rule
# Equivalence margin per suite, pp of top-1. ImageNet's is provisional (runs are costly, seeds few).
MARGINS = {"cifar100": 0.5, "imagenet": 0.3}
DEFAULT_MARGIN = 0.5
PROVISIONAL = {"imagenet"}
_SCAN = 512  # seeds_needed: first a vectorised scan of n = 2 .. _SCAN, then a bisection beyond
_MAX_SEEDS = 1 << 24


def margin_for(suite: str) -> float:
    return MARGINS.get(suite, DEFAULT_MARGIN)


@dataclass(frozen=True)
class Verdict:
    """One cell's verdict; ``interval`` is the 95% interval of d, ``interval90`` TOST's 90% one."""

    label: str
    p_value: float | None = None  # two-sided t-test of d ≠ 0 (see :func:`p_value`)
    seeds_needed: int | None = None  # inconclusive only; None there = never
    interval: tuple[float, float] | None = None
    interval90: tuple[float, float] | None = None
    se: float | None = None
    df: float | None = None

    @property
    def text(self) -> str:
        """As printed in the tables: ``inconclusive (n ≥ 7)``, ``inconclusive (never)``, ``below``, ..."""
        if self.label != INCONCLUSIVE:
            return self.label
        return f"{INCONCLUSIVE} ({NEVER if self.seeds_needed is None else f'n ≥ {self.seeds_needed}'})"

    @property
    def seeds_needed_text(self) -> str:
        if self.label != INCONCLUSIVE:
            return ""
        return NEVER if self.seeds_needed is None else str(self.seeds_needed)


def _welch(published_std: float | None, m: int) -> bool:
    return published_std is not None and math.isfinite(published_std) and m >= 2


def standard_error(s: float, n: int, m: int, published_std: float | None = None) -> tuple[float, float]:
    """(SE, degrees of freedom) of d = our mean − published.

    Student: SE = s·√(1/n + 1/m), ν = n − 1. Welch (the source states s_p over m ≥ 2 runs):
    SE = √(s²/n + s_p²/m), ν by Welch–Satterthwaite (https://doi.org/10.2307/3002019).
    """
    if not _welch(published_std, m):
        return s * math.sqrt(1.0 / n + 1.0 / m), float(n - 1)
    a, b = s * s / n, published_std * published_std / m
    se2 = a + b
    denom = a * a / (n - 1) + b * b / (m - 1)
    df = se2 * se2 / denom if denom > 0 else float(n - 1)
    return math.sqrt(se2), df


def p_value(d: float, se: float, df: float) -> float:
    """Two-sided p of the t-test of d ≠ 0: 2·P(T_ν > |d|/SE) (Student, or Welch with the published std).

    SE = 0 (no spread on either side): p = 1 for d = 0, else 0 (as ``tables.welch_p``).
    """
    if se == 0.0:
        return 1.0 if d == 0.0 else 0.0
    return float(2.0 * student_t.sf(abs(d) / se, df))


def _power_rhs(df: np.ndarray | float) -> np.ndarray | float:
    return student_t.ppf(1 - ALPHA / 2, df) + student_t.ppf(POWER, df)


def seeds_needed(d: float, s: float, m: int, published_std: float | None = None) -> int | None:
    """The smallest n ≥ 2 with |d|/SE(n) ≥ t(0.975, ν(n)) + t(0.80, ν(n)); None (never) when no n can.

    As n → ∞, SE → σ_p/√m (σ_p = s_p with Welch, else s) and ν → ∞ (Student) or m − 1 (Welch),
    so never ⇔ |d| ≤ (z(0.975) + z(0.80))·s/√m ≈ 2.8·s/√m (Student) or
    |d| ≤ (t(0.975, m−1) + t(0.80, m−1))·s_p/√m (Welch).
    """
    if not math.isfinite(d) or not math.isfinite(s) or s < 0:
        return None
    welch = _welch(published_std, m)
    sigma_p = published_std if welch else s
    limit_q = float(_power_rhs(m - 1)) if welch else float(norm.ppf(1 - ALPHA / 2) + norm.ppf(POWER))
    if abs(d) <= limit_q * sigma_p / math.sqrt(m):
        return None

    def holds(ns: np.ndarray) -> np.ndarray:
        if welch:
            a, b = s * s / ns, published_std * published_std / m
            se = np.sqrt(a + b)
            df = (a + b) ** 2 / (a * a / (ns - 1) + b * b / (m - 1))
        else:
            se, df = s * np.sqrt(1.0 / ns + 1.0 / m), ns - 1.0
        with np.errstate(divide="ignore"):
            return abs(d) / se >= _power_rhs(df)

    ns = np.arange(2, _SCAN + 1, dtype=float)
    ok = holds(ns)
    if ok.any():
        return int(ns[int(np.argmax(ok))])
    # Beyond the scan: the left side grows with n and the t quantiles fall, so bisect.
    lo, hi = _SCAN, 2 * _SCAN
    while not holds(np.array([float(hi)]))[0]:
        lo, hi = hi, 2 * hi
        if hi > _MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(np.array([float(mid)]))[0] else (mid, hi)
    return hi


def verdict(
    d: float, s: float, n: int, m: int | None = 1, published_std: float | None = None, margin: float = DEFAULT_MARGIN
) -> Verdict:
    """The verdict of d = our mean − published (see the module docstring for the rule).

    ``s``: our seed std (ddof=1), ``n``: our seeds, ``m``: the published runs (None → 1),
    ``published_std``: the source's std over its m runs (Welch when given and m ≥ 2),
    ``margin``: the equivalence margin of ``reproduced`` (pp).
    """
    m = 1 if m is None or m < 1 else int(m)
    if n < 2 or not math.isfinite(s):
        return Verdict(TOO_FEW)
    se, df = standard_error(s, n, m, published_std)
    p = p_value(d, se, df)
    q95, q90 = float(student_t.ppf(1 - ALPHA / 2, df)), float(student_t.ppf(1 - ALPHA, df))
    ci95, ci90 = (d - q95 * se, d + q95 * se), (d - q90 * se, d + q90 * se)
    common = dict(p_value=p, interval=ci95, interval90=ci90, se=se, df=df)
    if -margin < ci90[0] and ci90[1] < margin:
        return Verdict(REPRODUCED, **common)
    if ci95[1] < 0:
        return Verdict(BELOW, **common)
    if ci95[0] > 0:
        return Verdict(ABOVE, **common)
    return Verdict(INCONCLUSIVE, seeds_needed=seeds_needed(d, s, m, published_std), **common)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """BH-adjusted p-values (step-up): p_(i)·N/i, made monotone from the largest down, capped at 1.

    Benjamini & Hochberg 1995, https://doi.org/10.1111/j.2517-6161.1995.tb02031.x
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return [float(v) for v in out]


# --------------------------------------------------------------------------- the tables' cells


def apply_verdicts(suite: str, rows: Sequence["Row"], pairs: Sequence["Pair"]) -> None:
    """Set ``cell.verdict`` (and ``cell.p_adjusted``, BH over the table) for every cell with a published number.

    Teacher rows and § cells (teacher not the community one) get ``–``: no verdict.
    """
    margin = margin_for(suite)
    tested: list["Cell"] = []
    for row in rows:
        for pair in pairs:
            cell = row.cells.get(pair)
            if cell is None or cell.published is None:
                continue
            if row.method == TEACHER_ROW or not cell.delta_comparable:
                cell.verdict = Verdict(NOT_APPLICABLE)
                continue
            cell.verdict = verdict(cell.delta, cell.std, cell.n, cell.published.runs, cell.published.std, margin)
            if cell.verdict.p_value is not None:
                tested.append(cell)
    for cell, adjusted in zip(tested, benjamini_hochberg([c.verdict.p_value for c in tested])):
        cell.p_adjusted = adjusted


def verdict_text(cell: "Cell | None") -> str:
    return NOT_APPLICABLE if cell is None or cell.verdict is None else cell.verdict.text


def has_verdicts(table: "SuiteTable") -> bool:
    return any(c.verdict is not None for r in table.rows for c in r.cells.values())


def csv_fields(cell: "Cell") -> dict[str, object]:
    """The tidy CSV's verdict columns of one cell ("" where no verdict applies)."""
    v = cell.verdict
    shown = v is not None and v.label != NOT_APPLICABLE
    return {
        "verdict": v.label if shown else "",
        "p_value": v.p_value if shown and v.p_value is not None else math.nan,
        "p_adjusted": cell.p_adjusted if cell.p_adjusted is not None else math.nan,
        "seeds_needed": v.seeds_needed_text if shown else "",
        "best_minus_last": float(np.mean(cell.best_minus_last)) if cell.best_minus_last else math.nan,
    }


def verdict_notes(table: "SuiteTable") -> list[str]:
    """The footnote: the rule in two lines, and how many below/above verdicts chance alone would give."""
    if not has_verdicts(table):
        return []
    margin = margin_for(table.suite)
    provisional = ", provisional" if table.suite in PROVISIONAL else ""
    tested = sum(1 for r in table.rows for c in r.cells.values() if c.verdict and c.verdict.p_value is not None)
    chance = (
        f"With {tested} verdict(s) tested here, about {ALPHA * tested:.2f} would read below/above by chance "
        f"alone at α = {ALPHA:g} if every number reproduced (the CSV's p_adjusted: Benjamini–Hochberg over "
        "the table)."
        if tested
        else "No cell of this table is tested (n ≥ 2 and comparable), so none can read below/above by chance."
    )
    return [
        f"Verdict: d = Δ, SE = s·√(1/n + 1/m) (m = published runs, 1 when not stated; Welch when the source "
        f"gives its std), t on n − 1 df; reproduced = the 90% interval of d inside ±{margin:g} pp "
        f"(equivalence test, TOST; margin of suite '{table.suite}'{provisional}); below / above = the 95% interval "
        "excludes 0 on that side.",
        "Otherwise inconclusive (n ≥ k): k seeds would detect d with 80% power (never: not even infinitely many, "
        f"|d| ≤ 2.8·s/√m); too few seeds: n < 2; {NOT_APPLICABLE}: Teacher rows and cells whose "
        "teacher is not the published one. " + chance,
    ]


def unstated_note(table: "SuiteTable") -> list[str]:
    """A note when a published number's statistic is not stated (compared with the last-epoch table)."""
    if any(not c.published.stated for r in table.rows for c in r.cells.values() if c.published is not None):
        return [
            "Published numbers whose statistic is neither last nor best epoch (a released checkpoint, or a "
            "source that does not say) are compared with the last-epoch table."
        ]
    return []


def best_minus_last_text(cell: "Cell | None") -> str:
    if cell is None or not cell.best_minus_last:
        return NOT_APPLICABLE
    gaps = np.asarray(cell.best_minus_last, dtype=float)
    mean = round(float(np.mean(gaps)), 2) + 0.0  # no "-0.00"
    if gaps.size < 2:
        return f"{mean:+.2f} ({gaps.size})"
    return f"{mean:+.2f} ± {float(np.std(gaps, ddof=1)):.2f} ({gaps.size})"


def has_best_minus_last(table: "SuiteTable") -> bool:
    return table.statistic == "best" and any(c.best_minus_last for r in table.rows for c in r.cells.values())


BEST_MINUS_LAST_NOTE = (
    "Best − last: per run, its best-epoch minus its last-epoch top-1 (paired over seeds), "
    "mean ± std (n); the best epoch is a maximum over noisy evaluations, so this gap is the "
    "optimism of a best-epoch number."
)


def _blocks(table: "SuiteTable") -> list[tuple[str, str, str, Callable[["Cell | None"], str]]]:
    """(Markdown heading, LaTeX heading, row-label prefix, cell text) of the blocks under the Δ block."""
    blocks = []
    if has_verdicts(table):
        blocks.append(("Verdict vs published (see the notes):", r"Verdict vs.\ published", "Verdict ", verdict_text))
    if has_best_minus_last(table):
        blocks.append(
            (
                "Best − last epoch (paired over seeds):",
                r"Best $-$ last epoch (paired over seeds)",
                "Best − last ",
                best_minus_last_text,
            )
        )
    return blocks


def markdown_blocks(table: "SuiteTable", headers: list[str], align: Sequence[str]) -> list[str]:
    """The verdict block (under the Δ block) and, in the best-epoch table, the best − last block."""
    parts: list[str] = []
    for heading, _, prefix, text in _blocks(table):
        body = [[prefix + row.label] + [text(row.cells.get(p)) for p in table.pairs] for row in table.rows]
        frame = pd.DataFrame(body, columns=headers)
        parts += [heading, "", frame.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    return parts


def latex_lines(table: "SuiteTable", escape: Callable[[str], str]) -> list[str]:
    """The LaTeX rows of the same blocks (inside the tabular, before \\bottomrule)."""
    lines: list[str] = []
    for _, heading, prefix, text in _blocks(table):
        lines += [r"\midrule", rf"\multicolumn{{{len(table.pairs) + 1}}}{{l}}{{\emph{{{heading}}}}} \\"]
        for row in table.rows:
            cells = [escape(prefix + row.label)] + [escape(text(row.cells.get(p))) for p in table.pairs]
            lines.append(" & ".join(cells) + r" \\")
    return lines


def notes(table: "SuiteTable") -> list[str]:
    """Every note this module adds to a table."""
    out = unstated_note(table) + verdict_notes(table)
    if has_best_minus_last(table):
        out.append(BEST_MINUS_LAST_NOTE)
    return out


# --------------------------------------------------------------------------- the index


def index_rows(suite: str, tables: Sequence["SuiteTable"]) -> list[list[str]]:
    """One row per table with verdicts: counts per label and the seeds the inconclusive ones need."""
    out = []
    for table in tables:
        verdicts = [
            c.verdict
            for r in table.rows
            for c in r.cells.values()
            if c.verdict is not None and c.verdict.label != NOT_APPLICABLE
        ]
        if not verdicts:
            continue
        counts = {label: sum(v.label == label for v in verdicts) for label in LABELS}
        needed = sorted((v.seeds_needed for v in verdicts if v.label == INCONCLUSIVE and v.seeds_needed), key=int)
        never = sum(1 for v in verdicts if v.label == INCONCLUSIVE and v.seeds_needed is None)
        seeds = [f"n ≥ {k}" for k in needed] + ([f"never ({never})"] if never else [])
        out.append(
            [suite, table.statistic, str(len(verdicts))]
            + [str(counts[label]) for label in LABELS]
            + ["; ".join(seeds) or NOT_APPLICABLE]
        )
    return out


INDEX_HEADERS = ["suite", "table", "compared", *LABELS, "seeds a decision needs (inconclusive)"]
