//! The model card's page: one self-contained HTML5 file, like the audit page ([`crate::html`]),
//! whose style sheet, head and escaping it reuses. The reliability plot is inline SVG; the page
//! loads nothing and runs no script. Every string from the configuration, the schema or a
//! report is escaped.
//!
//! Each section's heading names the TRIPOD+AI items it answers.
//!
//! This module does no IO: it builds a `String`.

use std::fmt;

use medfed_protocol::fairness::Rate;

use super::figures::{Calibration, Estimate, Intervals};
use super::{ModelCard, Performance};
pub(crate) use crate::html::check_text;
use crate::html::{Esc, Num, RateText, page_head, put};

/// Writes formatted text into a `String`.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        put(&mut $out, format_args!($($arg)*))
    };
}

/// Renders `card` as a page.
pub fn render(card: &ModelCard) -> String {
    let mut out = String::new();
    page_head(&mut out, &format!("Model card: {}", card.title));
    released(&mut out, card);
    intended_use(&mut out, card);
    data(&mut out, card);
    model(&mut out, card);
    privacy(&mut out, card);
    performance(&mut out, card.performance.as_ref());
    calibration(&mut out, card.calibration.as_ref());
    fairness(&mut out, card);
    limitations(&mut out, card);
    tripod(&mut out, card);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// Text or "not stated".
struct Stated<'a>(&'a Option<String>);

impl fmt::Display for Stated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(text) => fmt::Display::fmt(&Esc(text), f),
            None => f.write_str("<em>not stated in the consortium's configuration</em>"),
        }
    }
}

/// One `<tr><th scope="row">name</th><td class="text">value</td></tr>`; `value` is HTML.
fn row(out: &mut String, name: &str, value: impl fmt::Display) {
    w!(
        *out,
        "<tr><th scope=\"row\">{}</th><td class=\"text\">{value}</td></tr>\n",
        Esc(name)
    );
}

fn released(out: &mut String, card: &ModelCard) {
    let r = &card.released_model;
    let class = match r.verdict.as_str() {
        "APPROVED" => "pass",
        "NOT APPROVED" => "fail",
        _ => "none",
    };
    w!(
        *out,
        "<section class=\"verdict {class}\" aria-label=\"Released model\">\n\
         <p class=\"word\">{}</p>\n<p>Released model of round {} (rule <code>{}</code>)</p>\n\
         </section>\n<h2 id=\"model-identity\">Released model (TRIPOD+AI 22)</h2>\n<table>\n",
        Esc(&r.verdict),
        r.round,
        Esc(&r.release_rule)
    );
    row(
        out,
        "Model SHA-256",
        format!("<code>{}</code>", Esc(&r.model_sha256)),
    );
    let checkpoint = r.checkpoint_sha256.as_deref().unwrap_or("not recorded");
    row(
        out,
        "Checkpoint SHA-256",
        format!("<code>{}</code>", Esc(checkpoint)),
    );
    row(
        out,
        "Model file SHA-256 (model.safetensors)",
        format!("<code>{}</code>", Esc(&r.model_file_sha256)),
    );
    let report = r
        .report_sha256
        .as_deref()
        .unwrap_or("none: released unjudged");
    row(
        out,
        "Audit report SHA-256",
        format!("<code>{}</code>", Esc(report)),
    );
    out.push_str("</table>\n");
}

fn intended_use(out: &mut String, card: &ModelCard) {
    let u = &card.intended_use;
    out.push_str(
        "<h2 id=\"intended-use\">Intended use, population and outcome (TRIPOD+AI 3b, 8a)</h2>\n\
         <table>\n",
    );
    row(out, "Intended use", Stated(&u.intended_use));
    row(out, "Population", Stated(&u.population));
    row(out, "Outcome", Stated(&u.outcome));
    row(
        out,
        "Outcome as the schema defines it",
        Esc(&u.outcome_definition),
    );
    row(out, "Developers", Stated(&u.developers));
    row(out, "Contact", Stated(&u.contact));
    out.push_str("</table>\n");
}

fn data(out: &mut String, card: &ModelCard) {
    let d = &card.data;
    out.push_str(
        "<h2 id=\"data\">Data: source, centres, sample size, missing values \
         (TRIPOD+AI 5a, 6a, 10, 11)</h2>\n<table>\n",
    );
    row(
        out,
        "Hospitals (statistics round)",
        Esc(&d.sites.join(", ")),
    );
    row(out, "Number of hospitals", d.sites.len());
    let rows = d
        .pooled_rows
        .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    row(out, "Training rows, pooled", rows);
    row(
        out,
        "Noise s.d. of each pooled count",
        Num(Some(d.count_noise_sd)),
    );
    out.push_str("</table>\n");
    w!(*out, "<p class=\"note\">{}</p>\n", Esc(&d.per_site));
    if !d.numeric.is_empty() {
        out.push_str(
            "<table>\n<caption>Numeric predictors, pooled</caption>\n<thead><tr>\
             <th scope=\"col\">Column</th><th scope=\"col\">Mean</th><th scope=\"col\">SD</th>\
             <th scope=\"col\">Missing values</th><th scope=\"col\">Missing</th></tr></thead>\n\
             <tbody>\n",
        );
        for c in &d.numeric {
            w!(
                *out,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"text\">{}</td>\
                 <td>{}</td></tr>\n",
                Esc(&c.column),
                Num(Some(c.mean)),
                Num(Some(c.std)),
                Esc(&c.missing_mode),
                missing_text(c.missing)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    if !d.categorical.is_empty() {
        out.push_str(
            "<table>\n<caption>Categorical predictors, pooled</caption>\n<thead><tr>\
             <th scope=\"col\">Column</th><th scope=\"col\">Levels (rows)</th>\
             <th scope=\"col\">Missing values</th><th scope=\"col\">Missing</th></tr></thead>\n\
             <tbody>\n",
        );
        for c in &d.categorical {
            let levels: Vec<String> = c
                .levels
                .iter()
                .zip(&c.counts)
                .map(|(l, n)| format!("{} ({n})", Esc(l)))
                .collect();
            w!(
                *out,
                "<tr><th scope=\"row\">{}</th><td class=\"text\">{}</td><td class=\"text\">{}</td>\
                 <td>{}</td></tr>\n",
                Esc(&c.column),
                levels.join(", "),
                Esc(&c.missing_mode),
                missing_text(c.missing)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str(
        "<h3 id=\"predictors\">Predictors (TRIPOD+AI 9a)</h3>\n<table>\n<thead><tr>\
         <th scope=\"col\">Column</th><th scope=\"col\">Kind</th>\
         <th scope=\"col\">Missing values</th><th scope=\"col\">Model input</th></tr></thead>\n\
         <tbody>\n",
    );
    for p in &card.predictors {
        w!(
            *out,
            "<tr><th scope=\"row\">{}</th><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td></tr>\n",
            Esc(&p.name),
            Esc(&p.kind),
            Esc(&p.missing_mode),
            if p.input { "yes" } else { "no (audited only)" }
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn missing_text(missing: Option<u64>) -> String {
    missing.map_or_else(|| "rows refused, not counted".to_owned(), |n| n.to_string())
}

fn model(out: &mut String, card: &ModelCard) {
    let m = &card.model;
    out.push_str("<h2 id=\"model\">Model and training (TRIPOD+AI 12c, 13, 15)</h2>\n<table>\n");
    row(out, "Architecture", Esc(&m.architecture));
    row(out, "Parameters", m.parameters);
    row(out, "Input features", Esc(&m.input_features.join(", ")));
    row(out, "Output", Esc(&m.output));
    row(out, "Decision threshold", m.decision_threshold);
    row(
        out,
        "Rounds (completed / planned)",
        format!("{} / {}", m.rounds_completed, m.rounds_planned),
    );
    row(
        out,
        "Server optimiser",
        format!("<code>{}</code>", Esc(&m.server_strategy)),
    );
    row(
        out,
        "Local training",
        format!(
            "{} epoch(s), learning rate {}, batch size {}",
            m.local_epochs, m.learning_rate, m.batch_size
        ),
    );
    row(out, "Positive-class weight (pos_weight)", m.pos_weight);
    row(out, "Privacy of training", Esc(&m.privacy_mechanism));
    row(
        out,
        "Secure aggregation",
        if m.secure_aggregation { "on" } else { "off" },
    );
    row(out, "Evaluation score-histogram bins", m.score_bins);
    out.push_str("</table>\n");
}

fn privacy(out: &mut String, card: &ModelCard) {
    let p = &card.privacy;
    out.push_str("<h2 id=\"privacy\">Privacy spent per hospital</h2>\n");
    match p.as_of_round {
        Some(round) => w!(
            *out,
            "<p>As each hospital declared it in the last audit report (round {round}).</p>\n"
        ),
        None => out.push_str("<p>No audit report records any declaration.</p>\n"),
    }
    out.push_str(
        "<table>\n<thead><tr><th scope=\"col\">Hospital</th><th scope=\"col\">ε</th>\
         <th scope=\"col\">δ</th></tr></thead>\n<tbody>\n",
    );
    for site in &p.per_site {
        w!(
            *out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td></tr>\n",
            Esc(&site.node),
            Num(Some(site.epsilon)),
            site.delta
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// "0.861 (0.809–0.912)" or "n/a".
fn estimate(e: Option<Estimate>) -> String {
    RateText(e.map(|e| Rate {
        value: e.value,
        interval: e.interval,
    }))
    .to_string()
}

fn performance(out: &mut String, performance: Option<&Performance>) {
    out.push_str("<h2 id=\"performance\">Pooled held-out performance (TRIPOD+AI 12e, 23a)</h2>\n");
    let Some(p) = performance else {
        out.push_str("<p>The released model has no pooled held-out evaluation.</p>\n");
        return;
    };
    let e = &p.evaluation;
    w!(
        *out,
        "<p>{} held-out patients from {}.</p>\n<table>\n",
        e.examples,
        Esc(&p.sites.join(", "))
    );
    let i: Option<&Intervals> = p.intervals.as_ref();
    row(
        out,
        "AUC",
        i.map_or_else(|| Num(e.auc).to_string(), |i| estimate(i.auc)),
    );
    row(
        out,
        "Accuracy",
        i.map_or_else(
            || Num(Some(e.accuracy)).to_string(),
            |i| RateText(i.accuracy).to_string(),
        ),
    );
    if let Some(i) = i {
        row(out, "Sensitivity", RateText(i.sensitivity));
        row(out, "Specificity", RateText(i.specificity));
        row(out, "Positive predictive value", RateText(i.ppv));
        row(out, "Negative predictive value", RateText(i.npv));
        row(out, "Prevalence", RateText(i.prevalence));
    } else {
        row(out, "Prevalence", Num(Some(e.prevalence)));
    }
    row(out, "Mean log loss", Num(Some(e.loss)));
    out.push_str("</table>\n");
    w!(*out, "<p class=\"note\">{}</p>\n", Esc(&p.note));
    if i.is_none() {
        out.push_str(
            "<p class=\"note\">The pooled counts of this evaluation were not kept, so the \
             figures have no intervals.</p>\n",
        );
    }
}

fn calibration(out: &mut String, calibration: Option<&Calibration>) {
    out.push_str("<h2 id=\"calibration\">Calibration (TRIPOD+AI 12e, 23a)</h2>\n");
    let Some(c) = calibration else {
        out.push_str(
            "<p>Not available: the pooled score histograms of the released model's evaluation \
             are not known.</p>\n",
        );
        return;
    };
    out.push_str("<table>\n");
    row(out, "Mean predicted risk", Num(Some(c.mean_predicted)));
    row(out, "Observed outcome rate", Num(Some(c.observed)));
    row(
        out,
        "Calibration-in-the-large (observed − predicted)",
        Num(Some(c.in_the_large)),
    );
    row(out, "Calibration slope (1 is ideal)", Num(c.slope));
    row(out, "Expected calibration error", Num(c.ece));
    out.push_str("</table>\n");
    reliability_plot(out, c);
    out.push_str(
        "<table>\n<caption>Reliability table</caption>\n<thead><tr><th scope=\"col\">Bin</th>\
         <th scope=\"col\">Patients</th><th scope=\"col\">Mean predicted</th>\
         <th scope=\"col\">Observed rate (95% CI)</th></tr></thead>\n<tbody>\n",
    );
    for b in &c.table {
        w!(
            *out,
            "<tr><th scope=\"row\">{:.1}–{:.1}</th><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            b.low,
            b.high,
            b.count.round(),
            Num(b.mean_score),
            RateText(b.observed)
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

/// The reliability plot: observed rate against mean predicted risk per bin, with Wilson
/// whiskers, and the diagonal of perfect calibration.
fn reliability_plot(out: &mut String, c: &Calibration) {
    const SIZE: f64 = 300.0;
    const PAD: f64 = 40.0;
    let x = |v: f64| PAD + v.clamp(0.0, 1.0) * SIZE;
    let y = |v: f64| PAD + (1.0 - v.clamp(0.0, 1.0)) * SIZE;
    let full = SIZE + 2.0 * PAD;
    w!(
        *out,
        "<svg viewBox=\"0 0 {full} {full}\" width=\"{full}\" height=\"{full}\" role=\"img\" \
         aria-labelledby=\"reliability-t\">\n<title id=\"reliability-t\">Reliability plot: \
         observed outcome rate against mean predicted risk per bin, with 95% intervals; the \
         diagonal is perfect calibration</title>\n"
    );
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        w!(
            *out,
            "<line class=\"grid\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n\
             <text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v}</text>\n\
             <text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{v}</text>\n",
            x(v),
            y(0.0),
            x(v),
            y(1.0),
            x(v),
            y(0.0) + 16.0,
            x(0.0) - 6.0,
            y(v) + 4.0
        );
    }
    w!(
        *out,
        "<line class=\"axis\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">mean predicted risk</text>\n\
         <text x=\"12\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {})\">\
         observed rate</text>\n",
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0),
        x(0.5),
        full - 4.0,
        y(0.5),
        y(0.5)
    );
    for b in &c.table {
        let (Some(mean), Some(observed)) = (b.mean_score, b.observed) else {
            continue;
        };
        w!(
            *out,
            "<g><title>{:.1}–{:.1}: {} patients, predicted {}, observed {}</title>\n\
             <line stroke=\"#0969da\" x1=\"{px}\" y1=\"{}\" x2=\"{px}\" y2=\"{}\"/>\n\
             <circle fill=\"#0969da\" cx=\"{px}\" cy=\"{}\" r=\"4\"/></g>\n",
            b.low,
            b.high,
            b.count.round(),
            Num(Some(mean)),
            Num(Some(observed.value)),
            y(observed.interval.low),
            y(observed.interval.high),
            y(observed.value),
            px = x(mean)
        );
    }
    out.push_str("</svg>\n");
}

fn fairness(out: &mut String, card: &ModelCard) {
    let f = &card.fairness;
    w!(
        *out,
        "<h2 id=\"fairness\">Fairness (TRIPOD+AI 14, 23a)</h2>\n<p>Verdict: <strong>{}</strong> \
         (the full per-group figures are in the audit report and its page, index.html)</p>\n<ul>\n",
        Esc(&f.verdict)
    );
    for reason in &f.reasons {
        w!(*out, "<li>{}</li>\n", Esc(reason));
    }
    out.push_str("</ul>\n");
    if !f.attributes.is_empty() {
        out.push_str(
            "<table>\n<thead><tr><th scope=\"col\">Attribute</th><th scope=\"col\">Groups \
             reported</th><th scope=\"col\">Policy</th></tr></thead>\n<tbody>\n",
        );
        for a in &f.attributes {
            w!(
                *out,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"text\">{}</td></tr>\n",
                Esc(&a.attribute),
                a.report.groups.len(),
                if a.policy.approved {
                    "<span class=\"pass-text\">passed</span>"
                } else {
                    "<span class=\"fail-text\">failed</span>"
                }
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
}

fn limitations(out: &mut String, card: &ModelCard) {
    out.push_str("<h2 id=\"limitations\">Limitations (TRIPOD+AI 26)</h2>\n<ul>\n");
    for l in &card.limitations {
        let source = if l.source == "consortium" {
            "consortium"
        } else {
            "generated"
        };
        w!(
            *out,
            "<li>{} <span class=\"ci\">({source})</span></li>\n",
            Esc(&l.text)
        );
    }
    out.push_str("</ul>\n");
}

fn tripod(out: &mut String, card: &ModelCard) {
    out.push_str(
        "<h2 id=\"tripod\">TRIPOD+AI items covered</h2>\n<table>\n<thead><tr>\
         <th scope=\"col\">Item</th><th scope=\"col\">Topic</th><th scope=\"col\">JSON key</th>\
         </tr></thead>\n<tbody>\n",
    );
    for t in &card.tripod_ai {
        w!(
            *out,
            "<tr><th scope=\"row\">{}</th><td class=\"text\">{}</td><td class=\"text\">\
             <code>{}</code></td></tr>\n",
            Esc(&t.item),
            Esc(&t.topic),
            Esc(&t.section)
        );
    }
    out.push_str(
        "</tbody>\n</table>\n<p class=\"note\">Items about the study rather than the model \
         (ethics, funding, registration, data and code sharing) are left to the consortium's \
         own report.</p>\n",
    );
}
