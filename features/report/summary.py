"""How the report reads its numbers: the IV and PSI bands (the one place their thresholds live,
docs/features.md#validation-vocabulary) and the headline a run prints and the HTML shows first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

IvStrength = Literal["useless", "weak", "medium", "strong", "suspect"]
PsiStatus = Literal["stable", "watch", "shifted"]

# Information Value bands: below IV_WEAK useless, then weak, medium, strong up to and including
# IV_SUSPECT; above it suspect (too good to be true for behaviour: look for leakage).
IV_WEAK = 0.02
IV_MEDIUM = 0.1
IV_STRONG = 0.3
IV_SUSPECT = 0.5
IV_BOUNDS = (IV_WEAK, IV_MEDIUM, IV_STRONG, IV_SUSPECT)

# Population Stability Index bands: below PSI_WATCH stable, up to and including PSI_SHIFTED
# watch, above it shifted.
PSI_WATCH = 0.1
PSI_SHIFTED = 0.25


def iv_strength(iv: float) -> IvStrength:
    """The band of an Information Value."""
    if iv < IV_WEAK:
        return "useless"
    if iv < IV_MEDIUM:
        return "weak"
    if iv < IV_STRONG:
        return "medium"
    if iv <= IV_SUSPECT:
        return "strong"
    return "suspect"


def psi_status(psi: float) -> PsiStatus:
    """The band of a Population Stability Index."""
    if psi < PSI_WATCH:
        return "stable"
    if psi <= PSI_SHIFTED:
        return "watch"
    return "shifted"


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The numbers printed at the end of a run and shown at the top of the HTML."""
    if report.get("model_skipped_reason"):
        return [
            ("users (scored / total)", f"{report['n_scored']} / {report['n_users']}"),
            ("model", "not trained: too few users to validate (see the report)"),
            ("feature-set version", str(report["feature_set_version"])),
        ]
    leak = report["leakage"]
    return [
        ("users (scored / total)", f"{report['n_scored']} / {report['n_users']}"),
        ("train / test", f"{report['n_train']} / {report['n_test']}"),
        ("test AUC", _fmt(report["auc"])),
        ("oracle AUC", _fmt(report["oracle_auc"])),
        ("AUC / oracle", _fmt(report["auc_vs_oracle"])),
        ("Gini", _fmt(report["gini"])),
        ("KS", _fmt(report["ks"])),
        ("max IV", f"{_fmt(report['max_iv'])} ({report['max_iv_feature']})"),
        ("score PSI train→test", f"{_fmt(report['psi_score'])} ({report['psi_score_status']})"),
        ("leaky-variant AUC", _fmt(leak["auc_leaky"])),
        ("model version", str(report["model_version"])),
        ("feature-set version", str(report["feature_set_version"])),
    ]


def format_headline(report: dict[str, Any]) -> str:
    rows: Sequence[tuple[str, str]] = headline(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {val}" for k, val in rows)
