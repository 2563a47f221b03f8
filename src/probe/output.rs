//! Renders probe reports: a table for people, one row per credential, and JSON for machines.

use super::report::{CheckResult, ProbeReport};
use super::{ProbeTarget, human};
use jiff::Timestamp;
use serde::Serialize;

/// A report with the name of the credential it is about.
#[derive(Clone, Debug)]
pub struct NamedReport {
    /// `namespace/name` of an AmrCredential, the directory or the variables read.
    pub name: String,
    /// What the probe found.
    pub report: ProbeReport,
}

/// How the probe prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, one row per credential.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// Renders `reports` in `format`, as of `now`.
pub fn render(reports: &[NamedReport], format: Format, now: Timestamp) -> String {
    match format {
        Format::Table => table(reports, now),
        Format::Json => json(reports, now),
    }
}

/// The table: name, identity, time left, result, and the first failing check with why.
pub fn table(reports: &[NamedReport], now: Timestamp) -> String {
    let header = ["NAME", "IDENTITY", "EXPIRES IN", "RESULT", "CHECK", "WHY"].map(String::from);
    let rows: Vec<[String; 6]> = reports.iter().map(|r| row(r, now)).collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|cells| line(cells, &widths))
        .collect()
}

fn row(named: &NamedReport, now: Timestamp) -> [String; 6] {
    let report = &named.report;
    let expires = report
        .expires_in(now)
        .map_or_else(|| "-".to_string(), human);
    let (result, check, why) = match report.failure() {
        None => ("PASS", "-".to_string(), summary(report)),
        Some(failed) => (
            "FAIL",
            failed.check.name().to_string(),
            failed.message.clone(),
        ),
    };
    [
        named.name.clone(),
        or_dash(&report.identity),
        expires,
        result.to_string(),
        check,
        why,
    ]
}

/// What a passing row says: how far the probe got.
fn summary(report: &ProbeReport) -> String {
    let target = report
        .target
        .as_ref()
        .map(|t| format!(" on {}:{}", t.host, t.port))
        .unwrap_or_default();
    let skipped: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status == super::Status::Skipped)
        .map(|c| c.check.name())
        .collect();
    if skipped.is_empty() {
        format!("AUTH and PING succeeded{target}")
    } else {
        format!(
            "AUTH and PING succeeded{target} (skipped: {})",
            skipped.join(", ")
        )
    }
}

fn line(cells: &[String; 6], widths: &[usize; 6]) -> String {
    let mut out = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            out.push_str(cell);
        } else {
            out.push_str(&format!("{cell:<width$}  "));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// The JSON document: `passed` overall and each credential with all its checks.
pub fn json(reports: &[NamedReport], now: Timestamp) -> String {
    let document = Document {
        passed: reports.iter().all(|r| r.report.passed()),
        credentials: reports.iter().map(|r| Entry::new(r, now)).collect(),
    };
    // Plain structs of strings, numbers and booleans always serialise.
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

#[derive(Serialize)]
struct Document<'a> {
    passed: bool,
    credentials: Vec<Entry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    name: &'a str,
    passed: bool,
    identity: &'a str,
    endpoint: Option<&'a ProbeTarget>,
    token_fingerprint: Option<&'a str>,
    expires_at: Option<String>,
    expires_in_seconds: Option<i64>,
    first_failure: Option<&'a CheckResult>,
    checks: &'a [CheckResult],
}

impl<'a> Entry<'a> {
    fn new(named: &'a NamedReport, now: Timestamp) -> Entry<'a> {
        let report = &named.report;
        Entry {
            name: &named.name,
            passed: report.passed(),
            identity: &report.identity,
            endpoint: report.target.as_ref(),
            token_fingerprint: report.token_fingerprint.as_deref(),
            expires_at: report.expires_at.map(|t| t.to_string()),
            expires_in_seconds: report.expires_in(now).map(|d| d.as_secs()),
            first_failure: report.failure(),
            checks: &report.checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::report::{Check, Recorder};

    fn named(name: &str, fail: Option<(Check, &str)>) -> NamedReport {
        let mut recorder = Recorder::new(&[]);
        for check in Check::VERIFIED {
            match fail {
                Some((failed, why)) if failed == check => recorder.fail(check, why),
                _ => recorder.pass(check, "ok"),
            }
        }
        NamedReport {
            name: name.to_string(),
            report: ProbeReport {
                target: Some(ProbeTarget::tls("cache.example", 10000)),
                identity: "oid-1".to_string(),
                token_fingerprint: Some("sha256:0011aabb".to_string()),
                expires_at: Some(Timestamp::from_second(3_600).unwrap()),
                checks: recorder.finish(),
            },
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(360).unwrap()
    }

    #[test]
    fn a_failing_row_names_the_check_and_why() {
        let text = table(
            &[named("shop/orders", Some((Check::Tls, "unknown CA")))],
            now(),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].contains("54m") && lines[1].contains("FAIL"));
        assert!(lines[1].ends_with("tls    unknown CA"), "{}", lines[1]);
    }

    #[test]
    fn a_passing_row_says_where_it_authenticated() {
        let text = table(&[named("shop/orders", None)], now());
        assert!(text.contains("PASS"));
        assert!(text.contains("AUTH and PING succeeded on cache.example:10000"));
    }

    #[test]
    fn json_has_the_overall_result_and_every_check() {
        let reports = [
            named("a", None),
            named("b", Some((Check::Auth, "WRONGPASS"))),
        ];
        let value: serde_json::Value = serde_json::from_str(&json(&reports, now())).unwrap();
        assert_eq!(value["passed"], false);
        assert_eq!(value["credentials"][0]["passed"], true);
        assert_eq!(value["credentials"][0]["expiresInSeconds"], 3_240);
        assert_eq!(value["credentials"][1]["firstFailure"]["check"], "auth");
        assert_eq!(value["credentials"][1]["checks"][8]["status"], "skipped");
    }
}
