//! The results of `nixoci smoke`: each check's outcome, and the report as a table for people, as
//! JSON (serde) and as JUnit XML for CI.

use std::fmt::Write as _;

use serde::Serialize;

use super::runtime::{GpuAccess, Runtime};

pub use crate::markup::escape as xml_escape;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    TimedOut,
    Skipped,
}

impl Status {
    /// The word of the table and the progress lines: PASS, FAIL, TIMEOUT, SKIP.
    pub fn word(self) -> &'static str {
        match self {
            Status::Passed => "PASS",
            Status::Failed => "FAIL",
            Status::TimedOut => "TIMEOUT",
            Status::Skipped => "SKIP",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::TimedOut)
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    pub gpu: bool,
    pub command: Vec<String>,
    pub seconds: f64,
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped; empty when it passed.
    pub message: String,
    pub stdout: String,
    pub stderr: String,
}

/// What `nixoci smoke` found: the JSON document of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeReport {
    pub image: String,
    pub runtime: Runtime,
    /// What the checks ran (the image ID, or the name the runtime loaded it as).
    pub image_id: String,
    pub gpu: Option<GpuAccess>,
    pub passed: bool,
    pub seconds: f64,
    pub checks: Vec<CheckResult>,
}

impl SmokeReport {
    /// A table for people; failed checks show their message and the end of their output.
    pub fn render(&self) -> String {
        let mut out = format!("smoke {} with {} ({})\n", self.image, self.runtime.program(), short(&self.image_id));
        if let Some(g) = &self.gpu {
            let _ = writeln!(
                out,
                "GPU: {}",
                if g.available { g.detail.clone() } else { format!("unavailable: {}", g.detail) }
            );
        }
        let width = self.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0).max(5);
        let _ = writeln!(out, "  {:<7}  {:<width$}  {:>7}  DETAIL", "STATUS", "CHECK", "SECONDS");
        for c in &self.checks {
            let line = format!("  {:<7}  {:<width$}  {:>7.2}  {}", c.status.word(), c.name, c.seconds, c.message);
            let _ = writeln!(out, "{}", line.trim_end());
            if c.status.is_failure() {
                for (label, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
                    let lines: Vec<&str> = text.lines().collect();
                    if lines.is_empty() {
                        continue;
                    }
                    let _ = writeln!(out, "           {label}:");
                    for l in &lines[lines.len().saturating_sub(15)..] {
                        let _ = writeln!(out, "             {l}");
                    }
                }
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "result: {} ({} passed, {} failed, {} timed out, {} skipped; {:.1}s)",
            if self.passed { "PASS" } else { "FAIL" },
            count(Status::Passed),
            count(Status::Failed),
            count(Status::TimedOut),
            count(Status::Skipped),
            self.seconds
        );
        out
    }

    /// JUnit XML: one `<testsuite>` named after the image, one `<testcase>` per check, with
    /// `<failure>` (message and output), `<skipped>`, and the captured `<system-out>`/`<system-err>`.
    pub fn junit_xml(&self) -> String {
        let count = |f: &dyn Fn(Status) -> bool| self.checks.iter().filter(|c| f(c.status)).count();
        let (tests, failures, skipped) =
            (self.checks.len(), count(&|s| s.is_failure()), count(&|s| s == Status::Skipped));
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"nixoci smoke\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
            self.seconds
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
            xml_escape(&self.image),
            self.seconds
        );
        for c in &self.checks {
            junit_testcase(&mut x, c);
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

/// One `<testcase>`: `<failure>` (message, command and output) or `<skipped>`, and the captured
/// `<system-out>`/`<system-err>`.
fn junit_testcase(x: &mut String, c: &CheckResult) {
    let _ = write!(
        x,
        "    <testcase name=\"{}\" classname=\"nixoci.smoke\" time=\"{:.3}\">",
        xml_escape(&c.name),
        c.seconds
    );
    match c.status {
        Status::Passed => {}
        Status::Skipped => {
            let _ = write!(x, "\n      <skipped message=\"{}\"/>", xml_escape(&c.message));
        }
        Status::Failed | Status::TimedOut => {
            let kind = if c.status == Status::TimedOut { "timeout" } else { "failed" };
            let body = format!(
                "command: {}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                c.command.join(" "),
                c.message,
                c.stdout,
                c.stderr
            );
            let _ = write!(
                x,
                "\n      <failure message=\"{}\" type=\"{kind}\">{}</failure>",
                xml_escape(&c.message),
                xml_escape(&body)
            );
        }
    }
    if !c.stdout.is_empty() {
        let _ = write!(x, "\n      <system-out>{}</system-out>", xml_escape(&c.stdout));
    }
    if !c.stderr.is_empty() {
        let _ = write!(x, "\n      <system-err>{}</system-err>", xml_escape(&c.stderr));
    }
    if c.status != Status::Passed || !c.stdout.is_empty() || !c.stderr.is_empty() {
        x.push_str("\n    ");
    }
    x.push_str("</testcase>\n");
}

fn short(id: &str) -> &str {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) { &id[..12] } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_is_escaped_and_counts_right() {
        let r = |name: &str, status, message: &str, stdout: &str| CheckResult {
            name: name.into(),
            status,
            gpu: false,
            command: vec!["x".into()],
            seconds: 1.5,
            exit_code: Some(1),
            message: message.into(),
            stdout: stdout.into(),
            stderr: String::new(),
        };
        let report = SmokeReport {
            image: "oci:a&b".into(),
            runtime: Runtime::Podman,
            image_id: "x".into(),
            gpu: None,
            passed: false,
            seconds: 3.0,
            checks: vec![
                r("ok <1>", Status::Passed, "", "fine"),
                r("bad", Status::Failed, "stdout does not contain \"y\"", "got <x> & \u{1b}[0m"),
                r("slow", Status::TimedOut, "timed out after 2s", ""),
                r("gpu", Status::Skipped, "a GPU check, skipped by --cpu", ""),
            ],
        };
        let x = report.junit_xml();
        assert!(x.contains("tests=\"4\" failures=\"2\" errors=\"0\" skipped=\"1\""), "{x}");
        assert!(x.contains("name=\"ok &lt;1&gt;\""), "{x}");
        assert!(x.contains("<failure message=\"stdout does not contain &quot;y&quot;\" type=\"failed\">"), "{x}");
        assert!(x.contains("got &lt;x&gt; &amp; \u{FFFD}[0m"), "{x}");
        assert!(x.contains("type=\"timeout\""), "{x}");
        assert!(x.contains("<skipped message=\"a GPU check, skipped by --cpu\"/>"), "{x}");
        assert!(!x.contains('\u{1b}'));
        assert!(report.render().contains("result: FAIL (1 passed, 1 failed, 1 timed out, 1 skipped"));
    }
}
