"""Multirun jobs that differ only in ``seed`` or ``data.fold`` are repeats of one setting: grouped, each final metric
as n, mean, standard deviation and a 95 % Student-t interval of the mean, ranked by the mean; and said in words when
the intervals of the best setting and another overlap, since the spread between seeds is often larger than the
differences being compared."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# overrides that repeat a setting rather than change it
REPEAT_KEYS = ("seed", "data.fold")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def setting_of(overrides: str) -> str:
    """A job's overrides without the repeat keys: the setting it is one repeat of."""
    return " ".join(o for o in overrides.split() if override_key(o) not in REPEAT_KEYS)


@dataclass
class Statistic:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); NaN for a single value
    low: float  # 95 % interval of the mean: mean -/+ t(0.975, n - 1) * std / sqrt(n); NaN for n < 2
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Statistic:
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        mean = statistics.fmean(values)
        if n == 1:
            return cls(1, mean, math.nan, math.nan, math.nan)
        from scipy.stats import t

        std = statistics.stdev(values)
        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        return cls(n, mean, std, mean - half, mean + half)

    def overlaps(self, other: Statistic) -> bool:
        return self.low <= other.high and other.low <= self.high

    def text(self) -> str:
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{self.mean:.4f} (n=1)"
        return f"{self.mean:.4f} ± {self.std:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n})"


@dataclass
class Group:
    setting: str  # the overrides the jobs share, repeat keys left out
    jobs: list[str] = field(default_factory=list)
    failed: int = 0
    stats: dict[str, Statistic] = field(default_factory=dict)


def group_jobs(rows: list[dict[str, Any]], metric: str, mode: str) -> list[Group]:
    """Groups of the job rows (``collect_jobs``) sharing a setting, best mean of ``metric`` first; groups without
    a finished job last."""
    groups: dict[str, Group] = {}
    for row in rows:
        group = groups.setdefault(setting_of(row["overrides"]), Group(setting_of(row["overrides"])))
        group.jobs.append(row["job"])
        group.failed += row["status"] != "done"
    names = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and k != "job"})
    for group in groups.values():
        members = [row for row in rows if row["job"] in group.jobs and row["status"] == "done"]
        for name in names:
            values = [float(r[name]) for r in members if isinstance(r.get(name), (int, float))]
            group.stats[name] = Statistic.of([v for v in values if math.isfinite(v)])
    sign = -1 if mode == "max" else 1

    def key(group: Group) -> float:
        stat = group.stats.get(metric)
        return sign * stat.mean if stat and stat.n else math.inf

    return sorted(groups.values(), key=key)


def varying_part(settings: list[str]) -> list[str]:
    """Each setting without the overrides every group shares (what the groups differ in)."""
    shared = set.intersection(*(set(s.split()) for s in settings)) if settings else set()
    return [" ".join(o for o in s.split() if o not in shared) or "(no other override)" for s in settings]


def overlap_sentences(groups: list[Group], metric: str) -> list[str]:
    """In words: which groups' 95 % intervals of ``metric`` overlap the best group's, and which groups have too
    few repeats to have an interval at all."""
    ranked = [g for g in groups if g.stats.get(metric) and g.stats[metric].n]
    if not ranked:
        return [f"No job finished with {metric}."]
    names = dict(zip((g.setting for g in ranked), varying_part([g.setting for g in ranked])))
    best = ranked[0]
    sentences = []
    single = [names[g.setting] for g in ranked if g.stats[metric].n < 2]
    if single:
        sentences.append(
            f"Without repeats (n=1, no interval): {'; '.join(single)}. Add seeds (seed=1,2,3) to measure the spread."
        )
    if best.stats[metric].n < 2 or len(ranked) == 1:
        return sentences
    overlapping = [g for g in ranked[1:] if g.stats[metric].n >= 2 and best.stats[metric].overlaps(g.stats[metric])]
    separate = [g for g in ranked[1:] if g.stats[metric].n >= 2 and g not in overlapping]
    for group in overlapping:
        sentences.append(
            f"The 95 % intervals of {metric} overlap for {names[best.setting]} (rank 1) and {names[group.setting]} "
            f"(rank {ranked.index(group) + 1}): their difference "
            f"({abs(best.stats[metric].mean - group.stats[metric].mean):.4f}) is within the spread between "
            "repeats, so this ranking between them is not established."
        )
    if separate:
        sentences.append(
            f"{names[best.setting]}'s 95 % interval of {metric} does not overlap that of "
            f"{', '.join(names[g.setting] for g in separate)}."
        )
    return sentences


def group_table(groups: list[Group], metric: str) -> tuple[list[str], list[list[str]]]:
    """The grouped table as text cells: rank, setting, n, failed, then mean / std / 95 % interval per metric."""
    names = [metric] + sorted({n for g in groups for n in g.stats} - {metric})
    header = ["rank", "setting", "n", "failed"]
    for name in names:
        header += [f"{name} mean", f"{name} std", f"{name} 95% low", f"{name} 95% high"]
    rows = []
    for rank, (group, setting) in enumerate(zip(groups, varying_part([g.setting for g in groups])), start=1):
        stat = group.stats.get(metric)
        row = [str(rank), setting, str(stat.n if stat else 0), str(group.failed)]
        for name in names:
            s = group.stats.get(name) or Statistic.of([])
            row += ["" if math.isnan(v) else f"{v:.6g}" for v in (s.mean, s.std, s.low, s.high)]
        rows.append(row)
    return header, rows


def markdown(groups: list[Group], jobs: list[dict[str, Any]], metric: str, mode: str) -> str:
    """``summary.md``: the grouped ranking, what overlaps, then every job."""
    lines = [f"# Multirun summary: {metric} ({mode})", ""]
    lines += ["## Settings (jobs differing only in seed or data.fold grouped)", ""]
    lines += [f"| rank | setting | {metric}: mean ± std [95 % interval] | n | failed |", "|---|---|---|---|---|"]
    for rank, (group, setting) in enumerate(zip(groups, varying_part([g.setting for g in groups])), start=1):
        stat = group.stats.get(metric) or Statistic.of([])
        lines.append(f"| {rank} | `{setting}` | {stat.text()} | {stat.n} | {group.failed} |")
    lines += ["", *overlap_sentences(groups, metric), "", "## Jobs", ""]
    lines += [f"| job | status | overrides | {metric} |", "|---|---|---|---|"]
    for row in jobs:
        value = row.get(metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        lines.append(f"| {row['job']} | {row['status']} | `{row['overrides']}` | {shown} |")
    return "\n".join(lines) + "\n"
