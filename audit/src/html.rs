//! The human page of the bias audit: one self-contained HTML5 file per round.
//!
//! [`render`] turns the latest audited round, and the history of earlier rounds, into a page that
//! opens offline: the CSS is inline, the charts are inline SVG drawn here, and the page loads
//! nothing — no script, font, image or style sheet from anywhere. A Content-Security-Policy
//! meta tag forbids scripts and remote loads as a second line of defence.
//!
//! Every string that reaches the page (titles, attribute and group names, which come from
//! hospital data, node names, the model hash) is escaped, so `<script>` in a group name renders as
//! text.
//!
//! ```text
//!  verdict of the latest round (APPROVED / NOT APPROVED + failing checks, each undefined
//!  value with the reason in words; or NO EVALUATION DATA)
//!  1. per-group rates with Wilson 95% whiskers, per attribute
//!  2. disparities against the policy limits
//!  3. metrics over rounds (AUC, accuracy, equalized odds, demographic parity ratio)
//!  4. per-group tables
//!  5. participants, their declared (ε, δ), the model SHA-256
//! ```
//!
//! This module does no IO: it builds a `String`, and the caller decides where it goes.

use std::fmt::{self, Display, Write};

use medfed_protocol::evaluation::EvalMetrics;
use medfed_protocol::fairness::{
    FairnessReport, GroupMetrics, GroupReport, Limit, PolicyCheck, Rate, SuppressionReason,
    UndefinedReason,
};
use medfed_protocol::report::{NotEvaluated, SiteEvaluation};

use crate::bias::AttributeAudit;

// Defined before the public API because `macro_rules!` macros are only visible below their
// definition.
/// Writes formatted text into a `String`.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        put(&mut $out, format_args!($($arg)*))
    };
}

/// What one audited round contributes to the page.
#[derive(Clone, Copy, Debug)]
pub struct PageRound<'a> {
    /// The round number.
    pub round: u64,
    /// Hex SHA-256 of the round's model.
    pub model_sha256: &'a str,
    /// Whether the round's model was approved.
    pub approved: bool,
    /// Why the round has no figures, when it has none (then `approved` is false and nothing
    /// was checked).
    pub not_evaluated: Option<NotEvaluated>,
    /// Pooled held-out evaluation, if the round had one.
    pub evaluation: Option<&'a EvalMetrics>,
    /// The bias audit, one entry per sensitive attribute.
    pub fairness: &'a [AttributeAudit],
    /// The nodes that took part in the round.
    pub participants: &'a [String],
    /// Consortium members whose held-out counts are not in the round's figures.
    pub absent_members: &'a [String],
    /// Each node's declared differential-privacy budget: (node, ε, δ).
    pub privacy: &'a [(String, f64, f64)],
    /// The own figures of the hospitals that opted in to releasing them (external validation
    /// per site); empty for most rounds.
    pub site_evaluations: &'a [SiteEvaluation],
}

/// The most rounds the charts over rounds show: the latest ones. The page is rewritten after
/// every round, so a chart of every round would make each rewrite cost more than the last (a
/// run of 2,000 rounds wrote a 3 MB page each round); each earlier round's figures stay in its
/// signed report.
pub const MAX_TREND_ROUNDS: usize = 200;

/// Renders the audit page for the latest round, with the history of earlier rounds for the trend
/// charts (the latest [`MAX_TREND_ROUNDS`] of them; a caller may pass only those).
///
/// `rounds` are in round order; the last one is the round the page is about. With no rounds the
/// page says so and shows nothing else.
pub fn render(title: &str, rounds: &[PageRound<'_>]) -> String {
    let mut page = Page::default();
    page.head(title);
    match rounds.last() {
        None => w!(page.out, "<p class=\"empty\">No audited round yet.</p>\n"),
        Some(latest) => {
            page.verdict(latest);
            page.nav();
            page.rates_section(latest);
            page.disparities_section(latest);
            page.trends_section(&rounds[rounds.len().saturating_sub(MAX_TREND_ROUNDS)..]);
            page.tables_section(latest);
            page.participants_section(latest);
        }
    }
    page.out.push_str("</main>\n</body>\n</html>\n");
    page.out
}

/// Appends formatted text to `out`.
pub(crate) fn put(out: &mut String, args: fmt::Arguments<'_>) {
    // Writing into a `String` cannot fail: its `fmt::Write` impl always returns `Ok`, and every
    // `Display` impl used here only forwards the formatter's own errors.
    out.write_fmt(args)
        .expect("writing into a String cannot fail");
}

/// A string escaped for HTML text and attribute values.
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A number with three decimals, or "n/a" when absent or not finite.
pub(crate) struct Num(pub(crate) Option<f64>);

impl Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) if v.is_finite() => write!(f, "{v:.3}"),
            _ => f.write_str("n/a"),
        }
    }
}

/// A rate with its interval, "0.812 (0.771–0.848)", or "n/a".
pub(crate) struct RateText(pub(crate) Option<Rate>);

impl Display for RateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(r) if r.value.is_finite() => write!(
                f,
                "{} <span class=\"ci\">({}–{})</span>",
                Num(Some(r.value)),
                Num(Some(r.interval.low)),
                Num(Some(r.interval.high))
            ),
            _ => f.write_str("n/a"),
        }
    }
}

/// The pages' style sheet (the audit page and the model card share it).
pub(crate) const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1f2328;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
h3{font-size:1.05rem;margin:1.5rem 0 .5rem}
.verdict{border:3px solid;border-radius:8px;padding:1rem 1.5rem;margin:1rem 0}
.verdict .word{font-size:2.6rem;font-weight:800;letter-spacing:.04em;margin:0}
.verdict.pass{border-color:#1a7f37;background:#dafbe1;color:#0f5323}
.verdict.fail{border-color:#b42318;background:#ffebe9;color:#7a1712}
.verdict.none{border-color:#8c959f;background:#f6f8fa;color:#1f2328}
.verdict ul{margin:.5rem 0 0}
.summary{display:flex;flex-wrap:wrap;gap:.5rem 2rem;margin:.5rem 0}
.summary div{white-space:nowrap}
nav ol{display:flex;flex-wrap:wrap;gap:.3rem 1.5rem;padding-left:1.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:right;vertical-align:top}
th[scope=row],td.text{text-align:left}
thead th{background:#f6f8fa}
td.suppressed{text-align:left;font-style:italic;color:#57606a}
.ci{color:#57606a;font-size:.8em;white-space:nowrap}
.pass-text{color:#1a7f37;font-weight:700}
.fail-text{color:#b42318;font-weight:700}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
svg{display:block;max-width:100%;height:auto;margin:.5rem 0}
svg text{font-family:system-ui,sans-serif;font-size:12px;fill:#1f2328}
svg .muted{fill:#57606a}
svg .grid{stroke:#d0d7de;stroke-width:1}
svg .axis{stroke:#8c959f;stroke-width:1}
.note{color:#57606a;font-size:.9rem}
.partial{color:#7a4b00;border-left:4px solid #b45309;padding-left:.5em}
";

/// Colours and dash patterns of the trend-chart series; the dash keeps them apart without colour.
const SERIES: [(&str, &str); 4] = [
    ("#0969da", ""),
    ("#bf3989", "6 3"),
    ("#1a7f37", "2 3"),
    ("#9a6700", "8 3 2 3"),
];

/// The page under construction.
#[derive(Default)]
struct Page {
    /// The HTML written so far.
    out: String,
    /// Counter for unique element ids (SVG titles).
    ids: usize,
}

/// One rate column of the per-group chart.
struct RateColumn {
    /// Column heading.
    name: &'static str,
    /// Picks the rate out of a group's metrics.
    pick: fn(&GroupMetrics) -> Option<Rate>,
}

const RATE_COLUMNS: [RateColumn; 3] = [
    RateColumn {
        name: "Selection rate",
        pick: |m| Some(m.selection_rate),
    },
    RateColumn {
        name: "True positive rate",
        pick: |m| m.tpr,
    },
    RateColumn {
        name: "False positive rate",
        pick: |m| m.fpr,
    },
];

/// The disparities drawn in section 2: label, the limit that bounds it, and value.
fn disparity_rows(report: &FairnessReport) -> Vec<(&'static str, Limit, Option<f64>)> {
    let d = report.disparities.as_ref();
    Limit::ALL
        .into_iter()
        .map(|limit| {
            let label = match limit {
                Limit::EqualizedOddsDifference => "Equalized odds difference",
                Limit::DemographicParityRatio => "Demographic parity ratio",
                Limit::DemographicParityDifference => "Demographic parity difference",
                Limit::EqualOpportunityDifference => "Equal opportunity difference",
            };
            (label, limit, d.and_then(|d| limit.value(d)))
        })
        .collect()
}

/// "≤" or "≥": how the check's value must compare with its threshold ("?" for a limit this
/// version does not know).
fn relation(check: &PolicyCheck) -> &'static str {
    check.limit().map_or("?", |limit| limit.bound().symbol())
}

/// Describes a policy check of `report` for the verdict: "limit: value (must be ≤ threshold)",
/// and for an undefined value, why.
pub(crate) fn check_text(check: &PolicyCheck, report: &FairnessReport) -> String {
    let value = match (check.value, undefined_reason(check, report)) {
        (Some(v), _) => Num(Some(v)).to_string(),
        (None, Some(reason)) => format!("undefined, because {reason}"),
        (None, None) => "undefined".to_owned(),
    };
    format!(
        "{}: {value} (must be {} {})",
        check.name,
        relation(check),
        Num(Some(check.threshold))
    )
}

/// Opens a page: the doctype, the head with the inline style sheet and a Content-Security-Policy
/// that forbids scripts and remote loads, and the `<h1>` title; the caller closes `<main>`,
/// `<body>` and `<html>`.
pub(crate) fn page_head(out: &mut String, title: &str) {
    w!(
        *out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <h1>{}</h1>\n",
        Esc(title),
        Esc(title)
    );
}

/// Why a check's value is undefined: the reason the check carries, or for a report written
/// before checks carried one, the reason its counts give.
fn undefined_reason(check: &PolicyCheck, report: &FairnessReport) -> Option<UndefinedReason> {
    if check.value.is_some() {
        return None;
    }
    check
        .undefined
        .clone()
        .or_else(|| report.undefined_reason(check.limit()?))
}

/// The group's name, whether reported or suppressed.
fn group_name(group: &GroupReport) -> &str {
    match group {
        GroupReport::Reported { group, .. } | GroupReport::Suppressed { group, .. } => group,
    }
}

/// The note shown in place of a suppressed group's figures.
fn suppressed_text(min_count: u64, reason: SuppressionReason) -> String {
    format!("suppressed (fewer than {min_count} {})", reason.count())
}

/// A finite value, or `None`.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

impl Page {
    /// A fresh element id.
    fn id(&mut self, prefix: &str) -> String {
        self.ids += 1;
        format!("{prefix}-{}", self.ids)
    }

    /// Opens an accessible SVG: `role="img"`, labelled by its `<title>`.
    fn svg_open(&mut self, width: f64, height: f64, title: &str, desc: &str) {
        let id = self.id("chart");
        w!(
            self.out,
            "<svg viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" \
             role=\"img\" aria-labelledby=\"{id}-t {id}-d\">\n\
             <title id=\"{id}-t\">{}</title>\n<desc id=\"{id}-d\">{}</desc>\n",
            Esc(title),
            Esc(desc)
        );
    }

    fn head(&mut self, title: &str) {
        page_head(&mut self.out, title);
    }

    fn verdict(&mut self, latest: &PageRound<'_>) {
        let (class, word, icon) = match (latest.not_evaluated, latest.approved) {
            (Some(_), _) => ("none", "NO EVALUATION DATA", "–"),
            (None, true) => ("pass", "APPROVED", "✔"),
            (None, false) => ("fail", "NOT APPROVED", "✘"),
        };
        w!(
            self.out,
            "<section class=\"verdict {class}\" aria-label=\"Verdict\">\n\
             <p class=\"word\"><span aria-hidden=\"true\">{icon}</span> {word}</p>\n\
             <p>Round {} — model <code>{}</code></p>\n",
            latest.round,
            Esc(latest.model_sha256)
        );
        let failing: Vec<(&AttributeAudit, &PolicyCheck)> = latest
            .fairness
            .iter()
            .flat_map(|a| {
                a.policy
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(move |c| (a, c))
            })
            .collect();
        if let Some(why) = latest.not_evaluated {
            w!(
                self.out,
                "<p>Not approved and not rejected: {}.</p>\n",
                Esc(&why.to_string())
            );
        } else if !failing.is_empty() {
            self.out
                .push_str("<p><strong>Failing checks:</strong></p>\n<ul>\n");
            for (audit, check) in failing {
                w!(
                    self.out,
                    "<li><strong>FAIL</strong> — {}: {}</li>\n",
                    Esc(&audit.attribute),
                    Esc(&check_text(check, &audit.report))
                );
            }
            self.out.push_str("</ul>\n");
        } else if !latest.approved {
            self.out.push_str(
                "<p>No fairness check failed; the model was not approved for another reason.</p>\n",
            );
        } else {
            let checks: usize = latest.fairness.iter().map(|a| a.policy.checks.len()).sum();
            w!(self.out, "<p>All {checks} fairness checks passed.</p>\n");
        }
        self.out.push_str("</section>\n");
        self.out.push_str("<div class=\"summary\">\n");
        match latest.evaluation {
            Some(e) => w!(
                self.out,
                "<div>Held-out examples: <strong>{}</strong></div>\n\
                 <div>AUC: <strong>{}</strong></div>\n\
                 <div>Accuracy: <strong>{}</strong></div>\n\
                 <div>Loss: <strong>{}</strong></div>\n\
                 <div>Prevalence: <strong>{}</strong></div>\n",
                e.examples,
                Num(e.auc),
                Num(Some(e.accuracy)),
                Num(Some(e.loss)),
                Num(Some(e.prevalence))
            ),
            None => self
                .out
                .push_str("<div>No held-out evaluation this round.</div>\n"),
        }
        w!(
            self.out,
            "<div>Participants: <strong>{}</strong></div>\n</div>\n",
            latest.participants.len()
        );
        self.site_table(latest.site_evaluations);
    }

    /// The opted-in hospitals' own figures, when there are any.
    fn site_table(&mut self, sites: &[SiteEvaluation]) {
        if sites.is_empty() {
            return;
        }
        self.out.push_str(
            "<table>\n<caption>The model on each opted-in hospital's own held-out patients \
             (external validation per site; every other figure on this page is pooled)\
             </caption>\n<thead><tr><th scope=\"col\">Hospital</th>\
             <th scope=\"col\">Counts</th><th scope=\"col\">Examples</th>\
             <th scope=\"col\">AUC</th><th scope=\"col\">Accuracy</th>\
             <th scope=\"col\">Loss</th><th scope=\"col\">Prevalence</th></tr></thead>\n<tbody>\n",
        );
        for site in sites {
            let counts = if site.noised { "noised" } else { "exact" };
            match &site.metrics {
                Some(m) => w!(
                    self.out,
                    "<tr><th scope=\"row\">{}</th><td class=\"text\">{counts}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    Esc(&site.node),
                    m.examples,
                    Num(m.auc),
                    Num(Some(m.accuracy)),
                    Num(Some(m.loss)),
                    Num(Some(m.prevalence))
                ),
                None => w!(
                    self.out,
                    "<tr><th scope=\"row\">{}</th><td class=\"text\">{counts}</td>\
                     <td class=\"suppressed\" colspan=\"5\">no held-out examples</td></tr>\n",
                    Esc(&site.node)
                ),
            }
        }
        self.out.push_str("</tbody>\n</table>\n");
    }

    fn nav(&mut self) {
        self.out.push_str(
            "<nav aria-label=\"Sections\"><ol>\n\
             <li><a href=\"#rates\">Per-group rates</a></li>\n\
             <li><a href=\"#disparities\">Disparities and policy</a></li>\n\
             <li><a href=\"#trends\">Metrics over rounds</a></li>\n\
             <li><a href=\"#tables\">Per-group tables</a></li>\n\
             <li><a href=\"#participants\">Participants and privacy</a></li>\n\
             </ol></nav>\n",
        );
    }

    /// Section 1: per-group rates with their Wilson intervals.
    fn rates_section(&mut self, latest: &PageRound<'_>) {
        self.out.push_str(
            "<section id=\"rates\">\n<h2>1. Per-group rates</h2>\n\
             <p class=\"note\">Dots are the observed rates, whiskers their Wilson 95% intervals. \
             Suppressed groups are too small to report and take no part in the disparities.</p>\n",
        );
        if latest.not_evaluated.is_some() {
            self.out
                .push_str("<p>No evaluation data this round, so nothing was audited.</p>\n");
        } else if latest.fairness.is_empty() {
            self.out
                .push_str("<p>No sensitive attribute was audited this round.</p>\n");
        }
        for audit in latest.fairness {
            w!(self.out, "<h3>{}</h3>\n", Esc(&audit.attribute));
            self.rates_chart(&audit.attribute, &audit.report);
        }
        self.out.push_str("</section>\n");
    }

    fn rates_chart(&mut self, attribute: &str, report: &FairnessReport) {
        const LABEL_W: f64 = 170.0;
        const PANEL_W: f64 = 280.0;
        const GAP: f64 = 30.0;
        const TOP: f64 = 46.0;
        const ROW_H: f64 = 28.0;
        let rows = report.groups.len().max(1) as f64;
        let width = LABEL_W + 3.0 * PANEL_W + 2.0 * GAP + 10.0;
        let height = TOP + rows * ROW_H + 10.0;
        let x_of = |panel: usize, v: f64| {
            LABEL_W + panel as f64 * (PANEL_W + GAP) + v.clamp(0.0, 1.0) * PANEL_W
        };
        self.svg_open(
            width,
            height,
            &format!("Per-group rates by {attribute}"),
            "Selection rate, true positive rate and false positive rate of each group, as dots \
             with Wilson 95% interval whiskers on a scale from 0 to 1.",
        );
        for (panel, column) in RATE_COLUMNS.iter().enumerate() {
            let mid = x_of(panel, 0.5);
            w!(
                self.out,
                "<text x=\"{mid}\" y=\"14\" text-anchor=\"middle\" font-weight=\"600\">{}</text>\n",
                column.name
            );
            for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
                let x = x_of(panel, tick);
                w!(
                    self.out,
                    "<line class=\"grid\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>\n\
                     <text class=\"muted\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\" \
                     font-size=\"10\">{tick}</text>\n",
                    TOP - 8.0,
                    height - 10.0,
                    TOP - 14.0
                );
            }
        }
        for (i, group) in report.groups.iter().enumerate() {
            let y = TOP + i as f64 * ROW_H + ROW_H / 2.0;
            w!(
                self.out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
                LABEL_W - 12.0,
                y + 4.0,
                Esc(&truncate(group_name(group), 24))
            );
            match group {
                GroupReport::Suppressed { reason, .. } => w!(
                    self.out,
                    "<text class=\"muted\" x=\"{}\" y=\"{}\" font-style=\"italic\">{}</text>\n",
                    LABEL_W + 4.0,
                    y + 4.0,
                    suppressed_text(report.min_count, *reason)
                ),
                GroupReport::Reported { group, metrics } => {
                    for (panel, column) in RATE_COLUMNS.iter().enumerate() {
                        match (column.pick)(metrics).filter(|r| {
                            r.value.is_finite()
                                && r.interval.low.is_finite()
                                && r.interval.high.is_finite()
                        }) {
                            Some(r) => {
                                let (lo, hi, x) = (
                                    x_of(panel, r.interval.low),
                                    x_of(panel, r.interval.high),
                                    x_of(panel, r.value),
                                );
                                w!(
                                    self.out,
                                    "<g><title>{}: {} {} (95% CI {}–{})</title>\
                                     <line x1=\"{lo}\" y1=\"{y}\" x2=\"{hi}\" y2=\"{y}\" \
                                     stroke=\"#1f2328\" stroke-width=\"1.5\"/>\
                                     <line x1=\"{lo}\" y1=\"{}\" x2=\"{lo}\" y2=\"{}\" \
                                     stroke=\"#1f2328\"/>\
                                     <line x1=\"{hi}\" y1=\"{}\" x2=\"{hi}\" y2=\"{}\" \
                                     stroke=\"#1f2328\"/>\
                                     <circle cx=\"{x}\" cy=\"{y}\" r=\"4.5\" fill=\"#0969da\"/></g>\n",
                                    Esc(group),
                                    column.name,
                                    Num(Some(r.value)),
                                    Num(Some(r.interval.low)),
                                    Num(Some(r.interval.high)),
                                    y - 5.0,
                                    y + 5.0,
                                    y - 5.0,
                                    y + 5.0
                                );
                            }
                            None => w!(
                                self.out,
                                "<text class=\"muted\" x=\"{}\" y=\"{}\" font-style=\"italic\">\
                                 n/a (no examples in the denominator)</text>\n",
                                x_of(panel, 0.0) + 4.0,
                                y + 4.0
                            ),
                        }
                    }
                }
            }
        }
        if report.groups.is_empty() {
            w!(
                self.out,
                "<text class=\"muted\" x=\"{}\" y=\"{}\">No groups.</text>\n",
                LABEL_W,
                TOP + ROW_H / 2.0
            );
        }
        self.out.push_str("</svg>\n");
    }

    /// Section 2: disparities against the policy's limits.
    fn disparities_section(&mut self, latest: &PageRound<'_>) {
        self.out.push_str(
            "<section id=\"disparities\">\n<h2>2. Disparities and policy limits</h2>\n\
             <p class=\"note\">Bars are the disparities between reported groups; the dashed \
             vertical line is the policy limit, where the policy sets one.</p>\n",
        );
        for audit in latest.fairness {
            w!(self.out, "<h3>{}</h3>\n", Esc(&audit.attribute));
            let undefined: Vec<(&str, UndefinedReason)> = disparity_rows(&audit.report)
                .into_iter()
                .filter_map(|(label, limit, _)| {
                    Some((label, audit.report.undefined_reason(limit)?))
                })
                .collect();
            if audit.report.disparities.is_none() {
                // Every disparity is undefined, for the same reason.
                if let Some((_, reason)) = undefined.first() {
                    w!(
                        self.out,
                        "<p>No disparity is defined: {}.</p>\n",
                        Esc(&reason.to_string())
                    );
                }
            } else if !undefined.is_empty() {
                self.out.push_str("<ul class=\"note\">\n");
                for (label, reason) in &undefined {
                    w!(
                        self.out,
                        "<li>{label} is undefined: {}.</li>\n",
                        Esc(&reason.to_string())
                    );
                }
                self.out.push_str("</ul>\n");
            }
            self.disparity_chart(audit);
        }
        self.out.push_str("</section>\n");
    }

    fn disparity_chart(&mut self, audit: &AttributeAudit) {
        const LABEL_W: f64 = 220.0;
        const BAR_W: f64 = 520.0;
        const TOP: f64 = 24.0;
        const ROW_H: f64 = 34.0;
        let mut rows: Vec<(String, Option<f64>, Option<&PolicyCheck>)> =
            disparity_rows(&audit.report)
                .into_iter()
                .map(|(label, limit, value)| {
                    let check = audit
                        .policy
                        .checks
                        .iter()
                        .find(|c| c.limit() == Some(limit));
                    (label.to_owned(), value, check)
                })
                .collect();
        // Limits this version does not know by name are still shown.
        for check in &audit.policy.checks {
            if check.limit().is_none() {
                rows.push((check.name.clone(), check.value, Some(check)));
            }
        }
        let scale = rows
            .iter()
            .flat_map(|(_, v, c)| [finite(*v), c.and_then(|c| finite(Some(c.threshold)))])
            .flatten()
            .fold(1.0_f64, f64::max);
        let width = LABEL_W + BAR_W + 230.0;
        let height = TOP + rows.len() as f64 * ROW_H + 10.0;
        let x_of = |v: f64| LABEL_W + (v / scale).clamp(0.0, 1.0) * BAR_W;
        self.svg_open(
            width,
            height,
            &format!(
                "Disparities by {} against the policy limits",
                audit.attribute
            ),
            "One bar per disparity between groups, with the policy limit as a vertical line and \
             whether the limit is met.",
        );
        for tick in 0..=4 {
            let v = scale * f64::from(tick) / 4.0;
            let x = x_of(v);
            w!(
                self.out,
                "<line class=\"grid\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>\
                 <text class=\"muted\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\" \
                 font-size=\"10\">{}</text>\n",
                TOP - 6.0,
                height - 10.0,
                TOP - 10.0,
                Num(Some(v))
            );
        }
        for (i, (label, value, check)) in rows.iter().enumerate() {
            let y = TOP + i as f64 * ROW_H;
            let mid = y + ROW_H / 2.0;
            let passed = check.map(|c| c.passed);
            let fill = match passed {
                Some(true) => "#1a7f37",
                Some(false) => "#b42318",
                None => "#8c959f",
            };
            w!(
                self.out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
                LABEL_W - 10.0,
                mid + 4.0,
                Esc(label)
            );
            let status = match (passed, check) {
                (Some(true), Some(c)) => {
                    format!("✔ PASS ({} {})", relation(c), Num(Some(c.threshold)))
                }
                (Some(false), Some(c)) => {
                    format!("✘ FAIL ({} {})", relation(c), Num(Some(c.threshold)))
                }
                _ => "no limit".to_owned(),
            };
            match finite(*value) {
                Some(v) => {
                    let bar = x_of(v) - LABEL_W;
                    // The value's label goes right of the bar and of the limit line.
                    let right = check
                        .and_then(|c| finite(Some(c.threshold)))
                        .map_or(v, |t| t.max(v));
                    let label_x = x_of(right) + 6.0;
                    w!(
                        self.out,
                        "<g><title>{}: {} — {}</title><rect x=\"{LABEL_W}\" y=\"{}\" \
                         width=\"{bar}\" height=\"{}\" fill=\"{fill}\" fill-opacity=\"0.75\"/>\
                         </g>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
                        Esc(label),
                        Num(Some(v)),
                        status,
                        y + 8.0,
                        ROW_H - 16.0,
                        label_x,
                        mid + 4.0,
                        Num(Some(v))
                    );
                }
                None => w!(
                    self.out,
                    "<text class=\"muted\" x=\"{}\" y=\"{}\" font-style=\"italic\">undefined</text>\n",
                    LABEL_W + 4.0,
                    mid + 4.0
                ),
            }
            if let Some(t) = check.and_then(|c| finite(Some(c.threshold))) {
                let x = x_of(t);
                w!(
                    self.out,
                    "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#1f2328\" \
                     stroke-width=\"2\" stroke-dasharray=\"4 2\"/>\n",
                    y + 3.0,
                    y + ROW_H - 3.0
                );
            }
            let class = match passed {
                Some(true) => "pass-text",
                Some(false) => "fail-text",
                None => "muted",
            };
            w!(
                self.out,
                "<text class=\"{class}\" x=\"{}\" y=\"{}\" fill=\"{fill}\" \
                 font-weight=\"700\">{}</text>\n",
                LABEL_W + BAR_W + 70.0,
                mid + 4.0,
                status
            );
        }
        self.out.push_str("</svg>\n");
    }

    /// Section 3: metrics over rounds.
    fn trends_section(&mut self, rounds: &[PageRound<'_>]) {
        self.out
            .push_str("<section id=\"trends\">\n<h2>3. Metrics over rounds</h2>\n");
        let xs: Vec<u64> = rounds.iter().map(|r| r.round).collect();
        if let (Some(first), Some(last)) = (rounds.first(), rounds.last())
            && first.round > 0
        {
            w!(
                self.out,
                "<p class=\"note\">The charts show rounds {} to {}: the latest {MAX_TREND_ROUNDS} \
                 at most. Each earlier round's figures are in its signed report, beside this \
                 page.</p>\n",
                first.round,
                last.round
            );
        }
        self.partial_rounds_note(rounds);
        self.line_chart(
            "Model quality over rounds",
            &xs,
            &[
                (
                    "AUC",
                    rounds
                        .iter()
                        .map(|r| r.evaluation.and_then(|e| e.auc))
                        .collect(),
                ),
                (
                    "Accuracy",
                    rounds
                        .iter()
                        .map(|r| r.evaluation.map(|e| e.accuracy))
                        .collect(),
                ),
            ],
        );
        let mut attributes: Vec<&str> = Vec::new();
        for audit in rounds.iter().flat_map(|r| r.fairness) {
            if !attributes.contains(&audit.attribute.as_str()) {
                attributes.push(&audit.attribute);
            }
        }
        for attribute in attributes {
            let find = |r: &PageRound<'_>| {
                r.fairness
                    .iter()
                    .find(|a| a.attribute == attribute)
                    .and_then(|a| a.report.disparities.clone())
            };
            w!(self.out, "<h3>{}</h3>\n", Esc(attribute));
            self.line_chart(
                &format!("Disparities by {attribute} over rounds"),
                &xs,
                &[
                    (
                        "Equalized odds difference",
                        rounds
                            .iter()
                            .map(|r| find(r).and_then(|d| d.equalized_odds_difference))
                            .collect(),
                    ),
                    (
                        "Demographic parity ratio",
                        rounds
                            .iter()
                            .map(|r| find(r).and_then(|d| d.demographic_parity_ratio))
                            .collect(),
                    ),
                ],
            );
        }
        self.out.push_str("</section>\n");
    }

    /// A small line chart on a 0–1 scale; a missing point breaks its line.
    fn line_chart(&mut self, title: &str, xs: &[u64], series: &[(&str, Vec<Option<f64>>)]) {
        const LEFT: f64 = 50.0;
        const PLOT_W: f64 = 560.0;
        const TOP: f64 = 12.0;
        const PLOT_H: f64 = 160.0;
        const LEGEND_W: f64 = 240.0;
        let width = LEFT + PLOT_W + 20.0 + LEGEND_W;
        let height = TOP + PLOT_H + 40.0;
        let (first, last) = (
            xs.first().copied().unwrap_or(0),
            xs.last().copied().unwrap_or(0),
        );
        let span = last.saturating_sub(first).max(1) as f64;
        let x_of = |round: u64| {
            if xs.len() < 2 {
                LEFT + PLOT_W / 2.0
            } else {
                LEFT + round.saturating_sub(first) as f64 / span * PLOT_W
            }
        };
        let y_of = |v: f64| TOP + (1.0 - v.clamp(0.0, 1.0)) * PLOT_H;
        let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
        self.svg_open(
            width,
            height,
            title,
            &format!(
                "Line chart over rounds {first} to {last} on a scale from 0 to 1: {}.",
                names.join(", ")
            ),
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let y = y_of(tick);
            w!(
                self.out,
                "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
                 <text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"end\" \
                 font-size=\"10\">{tick}</text>\n",
                LEFT + PLOT_W,
                LEFT - 6.0,
                y + 3.0
            );
        }
        w!(
            self.out,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n",
            TOP + PLOT_H,
            LEFT + PLOT_W,
            TOP + PLOT_H
        );
        // Round labels: at most about ten, always the first and the last.
        let step = xs.len().div_ceil(10).max(1);
        for (i, &round) in xs.iter().enumerate() {
            if i % step == 0 || i + 1 == xs.len() {
                w!(
                    self.out,
                    "<text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" \
                     font-size=\"10\">{round}</text>\n",
                    x_of(round),
                    TOP + PLOT_H + 14.0
                );
            }
        }
        w!(
            self.out,
            "<text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">round</text>\n",
            LEFT + PLOT_W / 2.0,
            TOP + PLOT_H + 32.0
        );
        for (k, (name, values)) in series.iter().enumerate() {
            let (colour, dash) = SERIES[k % SERIES.len()];
            let mut segment: Vec<(f64, f64)> = Vec::new();
            let mut segments = Vec::new();
            for (&round, &v) in xs.iter().zip(values) {
                match finite(v) {
                    Some(v) => segment.push((x_of(round), y_of(v))),
                    None => segments.push(std::mem::take(&mut segment)),
                }
            }
            segments.push(segment);
            w!(self.out, "<g><title>{}</title>\n", Esc(name));
            for segment in segments.iter().filter(|s| s.len() > 1) {
                let points: Vec<String> = segment.iter().map(|(x, y)| format!("{x},{y}")).collect();
                w!(
                    self.out,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
                     stroke-dasharray=\"{dash}\"/>\n",
                    points.join(" ")
                );
            }
            for (&round, &v) in xs.iter().zip(values) {
                if let Some(v) = finite(v) {
                    w!(
                        self.out,
                        "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{colour}\">\
                         <title>{} in round {round}: {}</title></circle>\n",
                        x_of(round),
                        y_of(v),
                        Esc(name),
                        Num(Some(v))
                    );
                }
            }
            self.out.push_str("</g>\n");
            let ly = TOP + 10.0 + k as f64 * 22.0;
            let lx = LEFT + PLOT_W + 20.0;
            let latest = values.last().copied().flatten();
            w!(
                self.out,
                "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" \
                 stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
                 <text x=\"{}\" y=\"{}\">{} ({})</text>\n",
                lx + 28.0,
                lx + 34.0,
                ly + 4.0,
                Esc(name),
                Num(latest)
            );
        }
        self.out.push_str("</svg>\n");
    }

    /// Under the charts over rounds: which rounds' figures come from fewer than every member.
    fn partial_rounds_note(&mut self, rounds: &[PageRound<'_>]) {
        let partial: Vec<&PageRound<'_>> = rounds
            .iter()
            .filter(|r| !r.absent_members.is_empty())
            .collect();
        if partial.is_empty() {
            return;
        }
        self.out.push_str(
            "<p class=\"note partial\">Figures of these rounds come from fewer than every \
             member hospital, so they do not compare like for like with the others: ",
        );
        for (i, round) in partial.iter().enumerate() {
            w!(
                self.out,
                "{}round {} (absent: {})",
                if i == 0 { "" } else { "; " },
                round.round,
                Esc(&round.absent_members.join(", "))
            );
        }
        self.out.push_str(".</p>\n");
    }

    /// Section 4: every group's figures, one table per attribute.
    fn tables_section(&mut self, latest: &PageRound<'_>) {
        self.out.push_str(
            "<section id=\"tables\">\n<h2>4. Per-group metrics</h2>\n\
             <p class=\"note\">Rates with their Wilson 95% intervals in brackets.</p>\n",
        );
        if !latest.absent_members.is_empty() {
            w!(
                self.out,
                "<p class=\"note partial\">These figures come from {} of the member hospitals: \
                 {} did not take part in this round's sum. A group's figures can differ from \
                 another round's because a hospital is missing, not because the model changed.\
                 </p>\n",
                latest.participants.len(),
                Esc(&latest.absent_members.join(", "))
            );
        }
        for audit in latest.fairness {
            let report = &audit.report;
            w!(
                self.out,
                "<table>\n<caption>{} (groups with fewer than {} examples, positives or \
                 negatives are suppressed)</caption>\n<thead><tr><th scope=\"col\">Group</th><th scope=\"col\">n</th>\
                 <th scope=\"col\">Prevalence</th><th scope=\"col\">Selection rate</th>\
                 <th scope=\"col\">Accuracy</th><th scope=\"col\">TPR</th>\
                 <th scope=\"col\">FPR</th><th scope=\"col\">FNR</th><th scope=\"col\">PPV</th>\
                 <th scope=\"col\">AUC</th><th scope=\"col\">ECE</th></tr></thead>\n<tbody>\n",
                Esc(&audit.attribute),
                report.min_count
            );
            for group in &report.groups {
                match group {
                    GroupReport::Suppressed { group, reason } => w!(
                        self.out,
                        "<tr><th scope=\"row\">{}</th><td class=\"suppressed\" colspan=\"10\">\
                         {}</td></tr>\n",
                        Esc(group),
                        suppressed_text(report.min_count, *reason)
                    ),
                    GroupReport::Reported { group, metrics } => w!(
                        self.out,
                        "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td>\
                         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                         <td>{}</td></tr>\n",
                        Esc(group),
                        metrics.n,
                        RateText(Some(metrics.prevalence)),
                        RateText(Some(metrics.selection_rate)),
                        RateText(Some(metrics.accuracy)),
                        RateText(metrics.tpr),
                        RateText(metrics.fpr),
                        RateText(metrics.fnr),
                        RateText(metrics.ppv),
                        Num(metrics.auc),
                        Num(Some(metrics.ece))
                    ),
                }
            }
            self.out.push_str("</tbody>\n</table>\n");
        }
        self.out.push_str("</section>\n");
    }

    /// Section 5: participants, their declared privacy budgets, and the model hash.
    fn participants_section(&mut self, latest: &PageRound<'_>) {
        self.out.push_str(
            "<section id=\"participants\">\n<h2>5. Participants and privacy</h2>\n\
             <table>\n<caption>Nodes in this round and their declared differential-privacy \
             budgets</caption>\n<thead><tr><th scope=\"col\">Node</th>\
             <th scope=\"col\">ε</th><th scope=\"col\">δ</th></tr></thead>\n<tbody>\n",
        );
        let mut nodes: Vec<&str> = latest.participants.iter().map(String::as_str).collect();
        for (node, _, _) in latest.privacy {
            if !nodes.contains(&node.as_str()) {
                nodes.push(node);
            }
        }
        for node in &nodes {
            match latest.privacy.iter().find(|(n, _, _)| n == node) {
                Some((_, epsilon, delta)) => w!(
                    self.out,
                    "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td></tr>\n",
                    Esc(node),
                    Num(Some(*epsilon)),
                    Sci(*delta)
                ),
                None => w!(
                    self.out,
                    "<tr><th scope=\"row\">{}</th><td class=\"suppressed\" colspan=\"2\">\
                     not declared</td></tr>\n",
                    Esc(node)
                ),
            }
        }
        if nodes.is_empty() {
            self.out
                .push_str("<tr><td class=\"text\" colspan=\"3\">No participants.</td></tr>\n");
        }
        w!(
            self.out,
            "</tbody>\n</table>\n<p>Model SHA-256: <code>{}</code></p>\n</section>\n",
            Esc(latest.model_sha256)
        );
    }
}

/// A small probability such as δ in scientific notation ("1e-5"), or "n/a".
struct Sci(f64);

impl Display for Sci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_finite() {
            f.write_str("n/a")
        } else if self.0 == 0.0 || self.0 >= 0.001 {
            write!(f, "{}", Num(Some(self.0)))
        } else {
            write!(f, "{:e}", self.0)
        }
    }
}

/// `s` cut to at most `max` characters, with an ellipsis if cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::fairness::{Disparities, Interval, PolicyOutcome};

    use super::*;

    fn rate(value: f64) -> Rate {
        Rate {
            value,
            interval: Interval {
                low: (value - 0.05).max(0.0),
                high: (value + 0.05).min(1.0),
            },
        }
    }

    fn metrics(n: u64, selection: f64, tpr: f64, fpr: f64) -> Box<GroupMetrics> {
        Box::new(GroupMetrics {
            n,
            prevalence: rate(0.3),
            selection_rate: rate(selection),
            accuracy: rate(0.8),
            tpr: Some(rate(tpr)),
            fpr: Some(rate(fpr)),
            fnr: Some(rate(1.0 - tpr)),
            ppv: Some(rate(0.6)),
            auc: Some(0.85),
            ece: 0.04,
        })
    }

    fn disparities(groups: &[&str], eod: f64, ratio: f64) -> Disparities {
        Disparities {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            demographic_parity_difference: 0.1,
            demographic_parity_ratio: Some(ratio),
            equalized_odds_difference: Some(eod),
            equal_opportunity_difference: Some(eod / 2.0),
            reference: None,
        }
    }

    fn check(name: &str, threshold: f64, value: f64) -> PolicyCheck {
        let limit = Limit::from_name(name).expect("a policy key");
        PolicyCheck {
            name: name.to_owned(),
            threshold,
            value: Some(value),
            passed: limit.bound().holds(value, threshold),
            undefined: None,
        }
    }

    /// Two attributes: `sex` (with a suppressed group) and `ethnicity`, whose group names try
    /// to inject markup; `eod` sets the ethnicity equalized-odds difference.
    fn audits(eod: f64) -> Vec<AttributeAudit> {
        let sex_checks = vec![
            check("max_equalized_odds_difference", 0.1, 0.05),
            check("min_demographic_parity_ratio", 0.8, 0.9),
        ];
        let eth_checks = vec![
            check("max_equalized_odds_difference", 0.1, eod),
            check("min_demographic_parity_ratio", 0.8, 0.85),
        ];
        vec![
            AttributeAudit {
                attribute: "sex".to_owned(),
                report: FairnessReport {
                    min_count: 10,
                    decision_threshold: 0.5,
                    groups: vec![
                        GroupReport::Reported {
                            group: "female".to_owned(),
                            metrics: metrics(120, 0.4, 0.7, 0.2),
                        },
                        GroupReport::Reported {
                            group: "male".to_owned(),
                            metrics: metrics(130, 0.36, 0.75, 0.18),
                        },
                        GroupReport::Suppressed {
                            group: "intersex".to_owned(),
                            reason: SuppressionReason::TooFewExamples,
                        },
                    ],
                    disparities: Some(disparities(&["female", "male"], 0.05, 0.9)),
                },
                policy: PolicyOutcome {
                    approved: sex_checks.iter().all(|c| c.passed),
                    checks: sex_checks,
                },
            },
            AttributeAudit {
                attribute: "ethnicity \"<b>\"".to_owned(),
                report: FairnessReport {
                    min_count: 10,
                    decision_threshold: 0.5,
                    groups: vec![
                        GroupReport::Reported {
                            group: "<script>alert(1)</script>".to_owned(),
                            metrics: metrics(80, 0.5, 0.6, 0.3),
                        },
                        GroupReport::Reported {
                            group: "O'Brien & co".to_owned(),
                            metrics: metrics(90, 0.45, 0.8, 0.25),
                        },
                    ],
                    disparities: Some(disparities(
                        &["<script>alert(1)</script>", "O'Brien & co"],
                        eod,
                        0.85,
                    )),
                },
                policy: PolicyOutcome {
                    approved: eth_checks.iter().all(|c| c.passed),
                    checks: eth_checks,
                },
            },
        ]
    }

    fn eval(auc: f64, accuracy: f64) -> EvalMetrics {
        EvalMetrics {
            examples: 420,
            loss: 0.45,
            accuracy,
            auc: Some(auc),
            prevalence: 0.3,
        }
    }

    /// Renders three rounds; the last one's ethnicity equalized-odds difference is `last_eod`.
    fn page(last_eod: f64) -> String {
        page_with_absent(last_eod, [&[], &[], &[]])
    }

    /// As [`page`], with each round's absent members.
    fn page_with_absent(last_eod: f64, absent: [&[String]; 3]) -> String {
        let history = [audits(0.04), audits(0.06), audits(last_eod)];
        let evals = [eval(0.71, 0.70), eval(0.76, 0.73), eval(0.80, 0.77)];
        let participants = vec![
            "hospital-a".to_owned(),
            "hospital-<b>".to_owned(),
            "hospital-c".to_owned(),
        ];
        let privacy = vec![
            ("hospital-a".to_owned(), 1.0, 1e-5),
            ("hospital-<b>".to_owned(), 2.5, 1e-6),
        ];
        let rounds: Vec<PageRound<'_>> = history
            .iter()
            .zip(&evals)
            .zip(absent)
            .enumerate()
            .map(|(i, ((fairness, evaluation), absent_members))| PageRound {
                round: i as u64 + 1,
                model_sha256: "ab12cd34",
                approved: fairness.iter().all(|a| a.policy.approved),
                not_evaluated: None,
                evaluation: Some(evaluation),
                fairness,
                participants: &participants,
                absent_members,
                privacy: &privacy,
                site_evaluations: &[],
            })
            .collect();
        render("Audit <round> & co", &rounds)
    }

    /// Checks that every non-void element is closed, in order; returns the first problem.
    fn nesting_problem(html: &str) -> Option<String> {
        const VOID: [&str; 5] = ["meta", "br", "hr", "img", "link"];
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            let Some(len) = rest[start..].find('>') else {
                return Some("unterminated tag".to_owned());
            };
            let end = start + len;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if let Some(closing) = tag.strip_prefix('/') {
                let closing = closing.trim();
                if stack.pop().as_deref() != Some(closing) {
                    return Some(format!("unexpected </{closing}>"));
                }
            } else if !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
        }
        (!stack.is_empty()).then(|| format!("unclosed {stack:?}"))
    }

    #[test]
    fn html_shows_approved_verdict() {
        let html = page(0.05);
        assert!(html.contains("verdict pass"));
        assert!(html.contains("> APPROVED</p>"));
        assert!(!html.contains("NOT APPROVED"));
        assert!(html.contains("All 4 fairness checks passed."));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("Round 3"));
    }

    #[test]
    fn html_shows_rejection_with_failing_checks() {
        let html = page(0.2);
        assert!(html.contains("verdict fail"));
        assert!(html.contains("NOT APPROVED"));
        assert!(html.contains("Failing checks"));
        assert!(html.contains(
            "ethnicity &quot;&lt;b&gt;&quot;: max_equalized_odds_difference: 0.200 \
             (must be ≤ 0.100)"
        ));
        assert!(html.contains("✘ FAIL"));
        // The failing check is listed once in the verdict, not for passing checks.
        assert!(!html.contains("sex: max_equalized_odds_difference"));
    }

    #[test]
    fn html_lists_every_attribute_and_suppressed_group() {
        let html = page(0.05);
        for needle in [
            "<h3>sex</h3>",
            "<h3>ethnicity &quot;&lt;b&gt;&quot;</h3>",
            "Per-group rates by sex",
            "Disparities by sex against the policy limits",
            "Disparities by sex over rounds",
            "intersex",
            "suppressed (fewer than 10 examples)",
            "Equalized odds difference",
            "Demographic parity ratio",
            "hospital-a",
            "not declared",
            "ab12cd34",
            "1e-5",
        ] {
            assert!(html.contains(needle), "missing {needle:?}");
        }
        // The suppressed group is in the chart and in the table.
        assert_eq!(
            html.matches("suppressed (fewer than 10 examples)").count(),
            2
        );
        // Each of the three rounds is a point of the AUC line.
        assert_eq!(html.matches("<title>AUC in round").count(), 3);
    }

    #[test]
    fn html_escapes_data_strings() {
        let html = page(0.2);
        assert!(!html.contains("<script"), "unescaped script tag");
        assert!(!html.contains("<b>"));
        assert!(!html.contains("<round>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("O&#39;Brien &amp; co"));
        assert!(html.contains("<title>Audit &lt;round&gt; &amp; co</title>"));
        assert!(html.contains("hospital-&lt;b&gt;"));
        assert_eq!(
            Esc("<a href=\"x\">'&'</a>").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn html_shows_opted_in_site_figures_apart_from_the_pooled_ones() {
        let sites = [
            SiteEvaluation {
                node: "hospital-<b>".into(),
                noised: false,
                metrics: Some(eval(0.8125, 0.75)),
            },
            SiteEvaluation {
                node: "hospital-c".into(),
                noised: true,
                metrics: None,
            },
        ];
        let round = |site_evaluations| PageRound {
            round: 3,
            model_sha256: "ff",
            approved: true,
            not_evaluated: None,
            evaluation: None,
            fairness: &[],
            participants: &[],
            absent_members: &[],
            privacy: &[],
            site_evaluations,
        };
        let html = render("Audit", &[round(&sites)]);
        assert!(html.contains("external validation per site"), "{html}");
        assert!(html.contains(
            "<tr><th scope=\"row\">hospital-&lt;b&gt;</th><td class=\"text\">exact</td>"
        ));
        assert!(html.contains("<td>0.812</td>"), "AUC to three places");
        assert!(html.contains("hospital-c</th><td class=\"text\">noised</td>"));
        assert_eq!(nesting_problem(&html), None);
        // Without site figures the page has no such table.
        let plain = render("Audit", &[round(&[])]);
        assert!(!plain.contains("external validation per site"));
    }

    #[test]
    fn html_loads_nothing_external() {
        let html = page(0.2);
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("@import"));
        for attribute in ["src=", "href="] {
            for (i, _) in html.match_indices(attribute) {
                let value = html[i + attribute.len()..].trim_start_matches(['"', '\'']);
                let value: String = value.chars().take_while(|c| *c != '"').collect();
                let scheme = value.split_once(':').is_some_and(|(s, _)| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                });
                assert!(
                    value.starts_with('#') && !scheme && !value.starts_with("//"),
                    "{attribute}{value} refers outside the page"
                );
            }
        }
        assert!(html.contains("Content-Security-Policy"));
    }

    #[test]
    fn html_is_well_formed() {
        let html = page(0.2);
        let open = html.matches("<svg ").count();
        assert!(open >= 6, "{open} charts");
        assert_eq!(open, html.matches("</svg>").count());
        assert_eq!(open, html.matches("role=\"img\"").count());
        assert_eq!(nesting_problem(&html), None);
        assert!(html.matches("<th scope=\"col\">").count() >= 11);
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn html_charts_only_the_latest_rounds_so_the_page_does_not_grow_with_the_run() {
        let history = audits(0.05);
        let evaluation = eval(0.8, 0.75);
        let participants = vec!["hospital-a".to_owned()];
        let pages: Vec<String> = [MAX_TREND_ROUNDS, 5 * MAX_TREND_ROUNDS]
            .iter()
            .map(|&n| {
                let rounds: Vec<PageRound<'_>> = (0..n as u64)
                    .map(|round| PageRound {
                        round,
                        model_sha256: "ab12cd34",
                        approved: true,
                        not_evaluated: None,
                        evaluation: Some(&evaluation),
                        fairness: &history,
                        participants: &participants,
                        absent_members: &[],
                        privacy: &[],
                        site_evaluations: &[],
                    })
                    .collect();
                render("Audit", &rounds)
            })
            .collect();
        let (short, long) = (&pages[0], &pages[1]);
        // Every round of the short run is charted; the long run charts as many, the latest.
        assert!(short.contains("AUC in round 0:") && !short.contains("The charts show rounds"));
        assert!(!long.contains("AUC in round 799:") && long.contains("AUC in round 800:"));
        assert!(long.contains("The charts show rounds 800 to 999: the latest 200 at most."));
        assert!(
            long.len() < short.len() + 1000,
            "{} against {}",
            long.len(),
            short.len()
        );
        assert_eq!(nesting_problem(long), None);
    }

    #[test]
    fn html_marks_rounds_whose_figures_come_from_fewer_than_every_member() {
        let complete = page(0.05);
        assert!(!complete.contains("note partial"));
        let absent = ["hospital-<d>".to_owned()];
        let html = page_with_absent(0.05, [&[], &absent, &absent]);
        // The charts over rounds name the partial rounds; the latest round's tables say so.
        let trends = &html[html.find("id=\"trends\"").unwrap()..];
        assert!(trends.contains("round 2 (absent: hospital-&lt;d&gt;); round 3 (absent"));
        assert!(!trends.contains("round 1 (absent"));
        let tables = &html[html.find("id=\"tables\"").unwrap()..];
        assert!(tables.contains(
            "These figures come from 3 of the member hospitals: hospital-&lt;d&gt; did not take part"
        ));
        assert_eq!(nesting_problem(&html), None);
    }

    #[test]
    fn html_renders_degenerate_rounds() {
        let empty = render("Audit", &[]);
        assert!(empty.contains("No audited round yet."));
        assert_eq!(nesting_problem(&empty), None);

        // One round, no evaluation, a rate of NaN, and a report without disparities whose
        // policy check fails on an undefined value.
        let mut m = metrics(50, f64::NAN, 0.5, 0.5);
        m.tpr = None;
        let fairness = [AttributeAudit {
            attribute: "site".to_owned(),
            report: FairnessReport {
                min_count: 20,
                decision_threshold: 0.5,
                groups: vec![
                    GroupReport::Reported {
                        group: "north".to_owned(),
                        metrics: m,
                    },
                    GroupReport::Suppressed {
                        group: "south".to_owned(),
                        reason: SuppressionReason::TooFewPositives,
                    },
                ],
                disparities: None,
            },
            policy: PolicyOutcome {
                checks: vec![PolicyCheck {
                    name: "max_equalized_odds_difference".to_owned(),
                    threshold: 0.1,
                    value: None,
                    passed: false,
                    // As in a report written before checks carried their reason.
                    undefined: None,
                }],
                approved: false,
            },
        }];
        let html = render(
            "Audit",
            &[PageRound {
                round: 7,
                model_sha256: "ff",
                approved: false,
                not_evaluated: None,
                evaluation: None,
                fairness: &fairness,
                participants: &[],
                absent_members: &[],
                privacy: &[],
                site_evaluations: &[],
            }],
        );
        assert!(html.contains("NOT APPROVED"));
        // The failing check says why its value is undefined, from the counts.
        let why = "every group but &quot;north&quot; is suppressed, so it has no group to be \
                   compared with (&quot;south&quot;: fewer than 20 positives)";
        assert!(
            html.contains(&format!(
                "site: max_equalized_odds_difference: undefined, because {why} (must be ≤ 0.100)"
            )),
            "{html}"
        );
        assert!(html.contains(&format!("No disparity is defined: {why}.")));
        assert!(html.contains("suppressed (fewer than 20 positives)"));
        assert!(html.contains("No held-out evaluation this round."));
        assert!(!html.contains("NaN"));
        assert_eq!(nesting_problem(&html), None);
    }

    #[test]
    fn html_names_each_undefined_disparity_and_the_check_s_own_reason() {
        // Two groups reported, nobody flagged positive at 0.3.
        let mut fairness = audits(0.05);
        let sex = &mut fairness[0];
        sex.report.decision_threshold = 0.3;
        let d = sex.report.disparities.as_mut().unwrap();
        d.demographic_parity_ratio = None;
        let reason = UndefinedReason::NobodyFlagged { threshold: 0.3 };
        sex.policy.checks[1] = PolicyCheck {
            name: "min_demographic_parity_ratio".to_owned(),
            threshold: 0.8,
            value: None,
            passed: false,
            undefined: Some(reason.clone()),
        };
        sex.policy.approved = false;
        let html = render(
            "Audit",
            &[PageRound {
                round: 2,
                model_sha256: "ff",
                approved: false,
                not_evaluated: None,
                evaluation: None,
                fairness: &fairness,
                participants: &[],
                absent_members: &[],
                privacy: &[],
                site_evaluations: &[],
            }],
        );
        assert!(html.contains(&format!(
            "sex: min_demographic_parity_ratio: undefined, because {reason} (must be ≥ 0.800)"
        )));
        assert!(html.contains(&format!(
            "<li>Demographic parity ratio is undefined: {reason}.</li>"
        )));
        assert!(reason.to_string().contains("threshold 0.3"));
        assert_eq!(nesting_problem(&html), None);
    }

    #[test]
    fn html_says_no_evaluation_data_rather_than_not_approved() {
        let html = render(
            "Audit",
            &[PageRound {
                round: 4,
                model_sha256: "ff",
                approved: false,
                not_evaluated: Some(NotEvaluated::NoEvaluationData),
                evaluation: None,
                fairness: &[],
                participants: &["hospital-a".to_owned()],
                absent_members: &[],
                privacy: &[],
                site_evaluations: &[],
            }],
        );
        assert!(html.contains("verdict none"));
        assert!(html.contains("NO EVALUATION DATA"));
        assert!(!html.contains("NOT APPROVED") && !html.contains("> APPROVED"));
        assert!(html.contains("holdout_fraction = 0"));
        assert!(html.contains("No evaluation data this round, so nothing was audited."));
        assert_eq!(nesting_problem(&html), None);
    }
}
