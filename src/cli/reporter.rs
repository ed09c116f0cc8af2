//! Progress on stderr: a bar per layer on a terminal, plain lines otherwise, nothing with -q.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use nixoci::blob::BlobInfo;
use nixoci::progress::Reporter;

pub struct CliReporter {
    mode: Mode,
    /// Blob uploads in progress, by id.
    uploads: Mutex<BTreeMap<usize, Upload>>,
}

struct Upload {
    label: String,
    total: u64,
    /// When a plain progress line was last printed.
    last_line: Instant,
    bar: Option<ProgressBar>,
}

/// Seconds between plain progress lines of one upload.
const LINE_EVERY: Duration = Duration::from_secs(5);

enum Mode {
    Quiet,
    Lines(Mutex<Vec<(String, usize)>>),
    Bars { multi: MultiProgress, bars: Mutex<Vec<Option<ProgressBar>>> },
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
        Self { mode, uploads: Mutex::new(BTreeMap::new()) }
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
                    ProgressStyle::with_template("{prefix:>7} {wide_msg} {bytes:>10}/{total_bytes:<10} {bar:30}")
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
        if let Mode::Bars { bars, .. } = &self.mode
            && let Some(Some(bar)) = bars.lock().unwrap().get(index)
        {
            bar.inc(bytes);
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

    fn upload_started(&self, id: usize, label: &str, bytes: u64) {
        let bar = match &self.mode {
            Mode::Quiet => return,
            Mode::Lines(_) => None,
            Mode::Bars { multi, .. } => {
                let bar = multi.add(ProgressBar::new(bytes));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>7} {wide_msg} {bytes:>10}/{total_bytes:<10} {bar:30} {bytes_per_sec:>12}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix("push");
                bar.set_message(label.to_owned());
                Some(bar)
            }
        };
        self.uploads
            .lock()
            .unwrap()
            .insert(id, Upload { label: label.to_owned(), total: bytes, last_line: Instant::now(), bar });
    }

    fn upload_progress(&self, id: usize, position: u64) {
        let mut uploads = self.uploads.lock().unwrap();
        let Some(u) = uploads.get_mut(&id) else {
            return;
        };
        match &u.bar {
            Some(bar) => bar.set_position(position),
            None if u.last_line.elapsed() >= LINE_EVERY => {
                u.last_line = Instant::now();
                eprintln!("uploading {}: {} of {}", u.label, human(position), human(u.total));
            }
            None => {}
        }
    }

    fn upload_finished(&self, id: usize, label: &str, outcome: &str) {
        let u = self.uploads.lock().unwrap().remove(&id);
        if let Some(bar) = u.as_ref().and_then(|u| u.bar.as_ref()) {
            bar.finish_and_clear();
        }
        if matches!(self.mode, Mode::Lines(_)) {
            match u {
                Some(u) => eprintln!("{label}: {outcome} ({})", human(u.total)),
                None => eprintln!("{label}: {outcome}"),
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

pub use nixoci::size::human;
