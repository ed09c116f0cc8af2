//! Progress on stderr: a bar per layer on a terminal, plain lines otherwise, nothing with -q.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use nixoci::blob::BlobInfo;
use nixoci::progress::Reporter;

pub struct CliReporter {
    mode: Mode,
}

enum Mode {
    Quiet,
    Lines(Mutex<Vec<(String, usize)>>),
    Bars {
        multi: MultiProgress,
        bars: Mutex<Vec<Option<ProgressBar>>>,
    },
}

impl CliReporter {
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(Vec::new()),
            }
        } else {
            Mode::Lines(Mutex::new(Vec::new()))
        };
        Self { mode }
    }

    pub fn finish(&self) {
        if let Mode::Bars { multi, .. } = &self.mode {
            let _ = multi.clear();
        }
    }
}

impl Reporter for CliReporter {
    fn layer_started(&self, index: usize, total: usize, label: &str, bytes: u64) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines(labels) => {
                let mut l = labels.lock().unwrap();
                if l.len() <= index {
                    l.resize(index + 1, (String::new(), 0));
                }
                l[index] = (label.to_owned(), total);
            }
            Mode::Bars { multi, bars } => {
                let bar = multi.add(ProgressBar::new(bytes));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>7} {wide_msg} {bytes:>10}/{total_bytes:<10} {bar:30}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("{}/{}", index + 1, total));
                bar.set_message(label.to_owned());
                let mut b = bars.lock().unwrap();
                if b.len() <= index {
                    b.resize(index + 1, None);
                }
                b[index] = Some(bar);
            }
        }
    }

    fn layer_progress(&self, index: usize, bytes: u64) {
        if let Mode::Bars { bars, .. } = &self.mode {
            if let Some(Some(bar)) = bars.lock().unwrap().get(index) {
                bar.inc(bytes);
            }
        }
    }

    fn layer_finished(&self, index: usize, blob: &BlobInfo) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines(labels) => {
                let l = labels.lock().unwrap();
                let (label, total) = l.get(index).cloned().unwrap_or_default();
                eprintln!(
                    "layer {}/{total} {label}: {} ({})",
                    index + 1,
                    short(&blob.digest.to_string()),
                    human(blob.size)
                );
            }
            Mode::Bars { bars, .. } => {
                if let Some(Some(bar)) = bars.lock().unwrap().get(index) {
                    bar.finish_and_clear();
                }
            }
        }
    }

    fn note(&self, message: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines(_) => eprintln!("{message}"),
            Mode::Bars { multi, .. } => {
                let _ = multi.println(message);
            }
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// `1.5 GiB`, `120 MiB`, `512 B`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
