"""``report.html``: one self-contained page (plots embedded as base64 PNG, no external assets)
that a risk analyst opens in a browser. The page skeleton and CSS live in
``features/report/templates/report.html``; this module draws the plots and fills the sections.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from string import Template
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory only

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from features.report.summary import (
    IV_BOUNDS,
    IV_MEDIUM,
    IV_STRONG,
    IV_SUSPECT,
    IV_WEAK,
    PSI_SHIFTED,
    PSI_WATCH,
    headline,
    iv_strength,
    psi_status,
)

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
FAMILY_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _roc_plot(report: dict[str, Any], plots: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    roc = plots["roc"]
    ax.plot(
        roc.false_positive_rate,
        roc.true_positive_rate,
        label=f"model (AUC {report['auc']:.3f})",
        lw=2,
    )
    oracle = plots.get("oracle_roc")
    if oracle is not None:
        ax.plot(
            oracle.false_positive_rate,
            oracle.true_positive_rate,
            label=f"oracle: latent score (AUC {oracle.auc:.3f})",
            lw=1.5,
            ls="--",
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="random")
    ax.set_xlabel("false-positive rate (goods flagged)")
    ax.set_ylabel("true-positive rate (defaulters caught)")
    ax.set_title("ROC, out-of-time test set")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _ks_plot(plots: dict[str, Any]) -> str:
    ks = plots["ks"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.step(ks.thresholds, ks.cdf_bad, where="post", label="F_bad (defaulters)", color="#d62728")
    ax.step(ks.thresholds, ks.cdf_good, where="post", label="F_good", color="#2ca02c")
    i = int(np.searchsorted(ks.thresholds, ks.ks_threshold))
    ax.vlines(
        ks.ks_threshold,
        ks.cdf_bad[i],
        ks.cdf_good[i],
        color="black",
        lw=2,
        label=f"KS = {ks.ks:.3f}",
    )
    ax.set_xlabel("predicted probability of default")
    ax.set_ylabel("cumulative share")
    ax.set_title("KS curve")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _distribution_plot(plots: dict[str, Any]) -> str:
    y, p = plots["y_test"], plots["p_test"]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    bins = np.linspace(float(p.min()), float(p.max()) + 1e-12, 30)
    ax.hist(p[y == 0], bins=bins.tolist(), density=True, alpha=0.6, label="repaid", color="#2ca02c")
    ax.hist(
        p[y == 1], bins=bins.tolist(), density=True, alpha=0.6, label="defaulted", color="#d62728"
    )
    ax.set_xlabel("predicted probability of default")
    ax.set_ylabel("density")
    ax.set_title("Score distribution by outcome")
    ax.legend(fontsize=8)
    return _png(fig)


def _calibration_plot(report: dict[str, Any]) -> str:
    rows = report["calibration"]
    predicted = [r["mean_predicted"] for r in rows]
    observed = [r["observed_rate"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 4.2))
    top = max([*predicted, *observed, 0.01]) * 1.1
    ax.plot([0, top], [0, top], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.plot(predicted, observed, marker="o", lw=2, label="deciles of the test set")
    ax.set_xlabel("mean predicted PD")
    ax.set_ylabel("observed default rate")
    ax.set_title("Calibration")
    ax.legend(fontsize=8)
    return _png(fig)


def _family_colours(families: dict[str, str]) -> dict[str, str]:
    ordered = sorted(set(families.values()))
    return {f: FAMILY_COLOURS[i % len(FAMILY_COLOURS)] for i, f in enumerate(ordered)}


def _iv_plot(report: dict[str, Any]) -> str:
    iv: dict[str, float] = report["iv"]
    families: dict[str, str] = report["families"]
    names = sorted(iv, key=lambda n: iv[n])
    colours = _family_colours(families)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.24 * len(names) + 1.2)))
    ax.barh(
        names,
        [iv[n] for n in names],
        color=[colours[families.get(n, "other")] for n in names],
    )
    for threshold in IV_BOUNDS:
        ax.axvline(threshold, color="grey", lw=0.8, ls=":")
    ax.axvline(IV_SUSPECT, color="#d62728", lw=1.2, ls="--")
    handles = [Patch(color=c) for c in colours.values()]
    ax.legend(handles, list(colours), title="family", fontsize=8, loc="lower right")
    ax.set_xlabel(
        f"Information Value (dotted: {IV_WEAK:g} / {IV_MEDIUM:g} / {IV_STRONG:g}; "
        f"red dashed: {IV_SUSPECT:g} leakage alarm)"
    )
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Information Value by feature")
    return _png(fig)


def _coverage_plot(report: dict[str, Any]) -> str:
    coverage: dict[str, dict[str, float | None]] = report["coverage"]
    names = sorted(coverage, key=lambda n: coverage[n]["non_null_share"] or 0.0)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.24 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(
        y - 0.2,
        [coverage[n]["non_null_share"] or 0.0 for n in names],
        height=0.4,
        label="users with a value",
        color="#1f77b4",
    )
    ax.barh(
        y + 0.2,
        [coverage[n]["mean_coverage"] or 0.0 for n in names],
        height=0.4,
        label="mean coverage (share of window days with data)",
        color="#aec7e8",
    )
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share")
    ax.set_title("Coverage per feature")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{html.escape(text)}</span>'


_IV_BANDS_TEXT = (
    f"&lt; {IV_WEAK:g} useless, {IV_WEAK:g}&ndash;{IV_MEDIUM:g} weak, "
    f"{IV_MEDIUM:g}&ndash;{IV_STRONG:g} medium, {IV_STRONG:g}&ndash;{IV_SUSPECT:g} strong,\n"
    f"&gt; {IV_SUSPECT:g} suspect leakage."
)
_PSI_BANDS_TEXT = (
    f"&lt; {PSI_WATCH:g} stable, {PSI_WATCH:g}&ndash;{PSI_SHIFTED:g} watch, "
    f"&gt; {PSI_SHIFTED:g} shifted."
)
PSI_BADGE = {"stable": "ok", "watch": "warn", "shifted": "bad"}
IV_BADGE = {"useless": "muted", "weak": "", "medium": "ok", "strong": "ok", "suspect": "bad"}


def _feature_table(report: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    for name in sorted(report["iv"], key=lambda n: -report["iv"][n]):
        iv = report["iv"][name]
        strength = report["iv_strength"][name]
        psi = report["psi"].get(name)
        cov = report["coverage"][name]
        rows.append(
            [
                html.escape(name),
                html.escape(report["families"].get(name, "")),
                html.escape(report["categories"].get(name, "")),
                f"{iv:.4f} {_badge(strength, IV_BADGE[strength])}",
                "n/a"
                if psi is None
                else f"{psi:.4f} {_badge(psi_status(psi), PSI_BADGE[psi_status(psi)])}",
                _fmt(cov["non_null_share"]),
                _fmt(cov["mean_coverage"]),
            ]
        )
    return _table(
        [
            "feature",
            "family",
            "data category",
            "IV",
            "PSI train→test",
            "users with value",
            "mean coverage",
        ],
        rows,
        "features",
    )


def _psi_score_table(report: dict[str, Any]) -> str:
    rows = [
        [
            html.escape(b["label"]),
            f"{b['expected_share']:.3f}",
            f"{b['actual_share']:.3f}",
            f"{b['contribution']:.4f}",
        ]
        for b in report["psi_score_bins"]
    ]
    return _table(["score bin", "train share", "test share", "PSI term"], rows)


def _reason_table(report: dict[str, Any]) -> str:
    rows = []
    for ex in report["reason_code_examples"]:
        reasons = "<br>".join(
            f"{html.escape(r['feature'])} = "
            f"{'missing' if r['value'] is None else format(r['value'], '.4g')} "
            f"(+{r['contribution']:.3f})"
            for r in ex["reason_codes"]
        )
        rows.append(
            [
                html.escape(ex["user_id"]),
                f"{ex['probability']:.3f}",
                "defaulted" if ex["defaulted"] else "repaid",
                reasons or "—",
            ]
        )
    return _table(["user", "PD", "outcome", "reason codes (added log-odds)"], rows)


def _leakage_section(report: dict[str, Any]) -> str:
    leak = report["leakage"]
    items = [
        f"<li>Honest pipeline (features as of each application date): AUC "
        f"<b>{_fmt(leak['auc_honest'])}</b>; oracle {_fmt(report['oracle_auc'])}.</li>"
    ]
    if leak["auc_leaky"] is not None:
        detected = leak["leaky_variant_detected"]
        items.append(
            f"<li>Deliberately leaky variant (features as of application date + "
            f"{_fmt(leak['shift_days'], 0)} days): AUC <b>{_fmt(leak['auc_leaky'])}</b> "
            f"(gain {_fmt(leak['auc_gain'])}; the check "
            f"{'fires' if detected else 'does NOT fire'} at ≥ {leak['min_gain']}). "
            f"{_badge('check has power', 'ok') if detected else _badge('no power', 'bad')}</li>"
        )
    else:
        items.append("<li>Leaky variant not run (no features after the application date).</li>")
    above = leak["honest_above_oracle"]
    if above is not None:
        items.append(
            "<li>Honest AUC vs oracle: "
            + (
                _badge("above oracle: investigate leakage", "bad")
                if above
                else _badge("within oracle", "ok")
            )
            + "</li>"
        )
    suspect = leak["suspect_iv_features"]
    if suspect:
        items.append(
            f"<li>Features with IV &gt; {IV_SUSPECT:g} (leakage alarm): "
            + ", ".join(html.escape(s) for s in suspect)
            + ". An IV this high on behavioural data usually means the feature saw the outcome;"
            " check its window ends before the application date.</li>"
        )
    else:
        items.append(
            f"<li>No feature has IV &gt; {IV_SUSPECT:g}. " + _badge("no IV alarm", "ok") + "</li>"
        )
    verdict = _badge("PASSED", "ok") if leak["honest_passed"] else _badge("REVIEW", "bad")
    return f"<p>Verdict for the honest pipeline: {verdict}</p><ul>{''.join(items)}</ul>"


def _cards(report: dict[str, Any]) -> str:
    return "".join(
        f'<div class="card"><div class="k">{html.escape(k)}</div>'
        f'<div class="v">{html.escape(val)}</div></div>'
        for k, val in headline(report)
    )


def _features_only_html(report: dict[str, Any]) -> str:
    """A labelled set too small to validate: its features' coverage, and why no model."""
    coverage = report["coverage"]
    rows = [
        [
            html.escape(name),
            html.escape(report["families"].get(name, "")),
            html.escape(report["categories"].get(name, "")),
            _fmt(coverage[name]["non_null_share"]),
            _fmt(coverage[name]["mean_coverage"]),
        ]
        for name in sorted(coverage)
    ]
    table = _table(
        ["feature", "family", "data category", "users with value", "mean coverage"],
        rows,
        "features",
    )
    sections = f"""
<section><h2>Model: not trained</h2>
<p>{_badge("too small to validate", "warn")} {html.escape(report["model_skipped_reason"])}.</p>
<p>So this report has no ranking power, calibration, Information Value, stability, leakage or
reason-code sections: each needs a trained model or both outcomes in the training and test
populations. The features below were computed for {report["n_scored"]} of
{report["n_users"]} users ({report["n_defaulters_scored"]} of them defaulted).</p>
</section>
<section><h2>Features: coverage</h2>
{table}
{_coverage_plot(report) if coverage else ""}
</section>
"""
    return _page(report, sections, model_version="none", model_kind="(not trained)")


def render_html(report: dict[str, Any], plots: dict[str, Any]) -> str:
    if report.get("model_skipped_reason"):
        return _features_only_html(report)
    sections = _ranking_section(report, plots) + _model_sections(report)
    model_kind = f"{report['model_kind']} ({report['window_set']} windows)"
    return _page(
        report, sections, model_version=str(report["model_version"]), model_kind=model_kind
    )


def _page(report: dict[str, Any], sections: str, *, model_version: str, model_kind: str) -> str:
    """The page skeleton (``templates/report.html``) around the headline cards and sections."""
    page = Template(TEMPLATE.read_text(encoding="utf-8"))
    return page.substitute(
        title="Hearth model validation report",
        generated_at=html.escape(report["generated_at"]),
        model_version=html.escape(model_version),
        feature_set_version=html.escape(str(report["feature_set_version"])),
        model_kind=html.escape(model_kind),
        source=html.escape(str(report["features_source"])),
        cards=_cards(report),
        sections=sections,
    )


def _ranking_section(report: dict[str, Any], plots: dict[str, Any]) -> str:
    """ROC, KS, score distributions and calibration of the out-of-time test set."""
    charts = "".join(
        f'<figure class="chart">{img}</figure>'
        for img in (
            _roc_plot(report, plots),
            _ks_plot(plots),
            _distribution_plot(plots),
            _calibration_plot(report),
        )
    )
    calibration = _table(
        ["decile", "n", "mean predicted", "observed"],
        [
            [
                str(r["bucket"]),
                str(r["n"]),
                f"{r['mean_predicted']:.4f}",
                f"{r['observed_rate']:.4f}",
            ]
            for r in report["calibration"]
        ],
    )
    return f"""
<section><h2>Ranking power and calibration</h2>
<p>Out-of-time validation: the model trained on the {report["n_train"]} applications before
{html.escape(report["split_cutoff"])} and is scored on the {report["n_test"]} after it.
Gini = 2·AUC &minus; 1; KS = max |F<sub>bad</sub> &minus; F<sub>good</sub>|.</p>
<div class="grid">{charts}</div>
<details><summary>Calibration table</summary>{calibration}</details>
</section>"""


def _family_section(report: dict[str, Any]) -> str:
    """The strongest IV of each family, and what the ablated family adds to the AUC."""
    families: dict[str, dict[str, Any]] = report.get("family_iv") or {}
    rows = []
    for family, entry in sorted(families.items(), key=lambda kv: -kv[1]["max_iv"]):
        band = iv_strength(entry["max_iv"])
        rows.append(
            [
                html.escape(family),
                f"{entry['max_iv']:.4f} {_badge(band, IV_BADGE[band])}",
                html.escape(entry["feature"]),
                str(entry["features"]),
            ]
        )
    table = _table(["family", "strongest IV", "feature", "features"], rows) if rows else ""
    ablation = report.get("family_auc")
    note = ""
    if ablation:
        gain = ablation["auc_gain"]
        verdict = "adds" if gain > 0 else "does not add"
        note = (
            f"<p>The <b>{html.escape(ablation['family'])}</b> family {verdict} AUC: "
            f"{_fmt(ablation['auc_with'])} with it, {_fmt(ablation['auc_without'])} when the "
            f"model's other features are trained alone (gain {gain:+.4f}; in the model: "
            f"{html.escape(', '.join(ablation['features_in_model']) or 'none')}).</p>"
        )
    return f"<h3>By family</h3>{table}{note}"


def _model_sections(report: dict[str, Any]) -> str:
    """Information Value, stability, the feature table, leakage and reason codes."""
    return f"""
<section><h2>Information Value by feature and family</h2>
<p>IV = Σ(%good &minus; %bad)·WOE over quantile bins plus a separate Missing bin.
{_IV_BANDS_TEXT}</p>
{_iv_plot(report)}
{_family_section(report)}
</section>
<section><h2>Stability (PSI, training vs test population)</h2>
<p>PSI = Σ(A &minus; E)·ln(A/E); {_PSI_BANDS_TEXT}
Score PSI: <b>{_fmt(report["psi_score"])}</b>
{_badge(report["psi_score_status"], PSI_BADGE[report["psi_score_status"]])}</p>
{_psi_score_table(report)}
</section>
<section><h2>Features: IV, PSI and coverage</h2>
{_feature_table(report)}
{_coverage_plot(report)}
</section>
<section><h2>Leakage check</h2>{_leakage_section(report)}</section>
<section><h2>Reason codes (riskiest test applicants)</h2>
<p>Each score carries its top reasons: the features that added most log-odds of default
relative to the average training applicant, with the model and feature-set versions.</p>
{_reason_table(report)}
</section>
"""
