//! The `--html` report: one self-contained page (inline CSS, no script, no external asset).
//!
//! OLD and NEW are drawn as two stacked bars on one scale, each layer as wide as its compressed
//! size: shared layers in one colour, layers only one image has in another, regrouped and
//! recompressed layers in colours of their own (the [`super::LayerStatus`] of each). Hovering a layer shows its group, size, digest and store paths (a `title` tooltip). The
//! tables of the text report follow. Every string from the images is escaped.

use std::fmt::Write;

use super::{Diff, FileChange};
use crate::inspect::{Inspection, LayerInfo};
use crate::table::{human_size, short_digest};

pub use crate::markup::escape;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1d232a; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #d5dbe1; padding-bottom: .2em; }
code, td.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.refs { color: #4b5563; margin: 0 0 1em; }
.summary { font-size: 1.1em; background: #f3f6f9; border-radius: 6px; padding: .6em .9em; }
.summary b { font-size: 1.15em; }
.legend { margin: 1em 0 .4em; color: #4b5563; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; margin: 0 .3em 0 1em; }
.sw:first-child { margin-left: 0; }
.barrow { display: flex; align-items: center; margin: .5em 0; }
.barlabel { width: 3.5em; font-weight: 600; flex: none; }
.track { flex: 1; min-width: 0; }
.bar { display: flex; height: 38px; border: 1px solid #9aa5b1; border-radius: 4px; overflow: hidden; background: #fff; }
.bartotal { width: 6.5em; text-align: right; flex: none; color: #4b5563; }
.layer { box-sizing: border-box; min-width: 3px; height: 100%; border-right: 1px solid #fff; overflow: hidden;
         white-space: nowrap; font-size: 11px; line-height: 38px; padding: 0 3px; color: #10161d; cursor: default; }
.layer:hover { outline: 2px solid #10161d; outline-offset: -2px; }
.shared, .sw.shared { background: #9db7d3; }
.changed, .sw.changed { background: #f0904a; }
.regrouped, .sw.regrouped { background: #b99ae0; }
.recompressed, .sw.recompressed { background: #8cc9a3; }
table { border-collapse: collapse; width: 100%; margin: .4em 0; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e5e9ee; vertical-align: top; }
th { background: #f3f6f9; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
.none { color: #6b7280; font-style: italic; }
.identical { font-size: 1.1em; color: #166534; background: #ecfdf3; border-radius: 6px; padding: .6em .9em; }
"#;

/// Renders the whole page.
pub fn render(d: &Diff) -> String {
    let mut h = String::new();
    let title = format!("nixoci diff: {} → {}", d.old.reference, d.new.reference);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = writeln!(h, "<h1>nixoci diff</h1>");
    let _ = writeln!(
        h,
        "<p class=\"refs\">OLD <code>{}</code> ({})<br>NEW <code>{}</code> ({})</p>",
        escape(&d.old.reference),
        escape(short_digest(d.old.manifest_digest.as_str())),
        escape(&d.new.reference),
        escape(short_digest(d.new.manifest_digest.as_str())),
    );
    if d.identical {
        let _ = writeln!(
            h,
            "<p class=\"identical\">The images are identical: same config, same layers. Nothing to download.</p>"
        );
    }
    let _ = writeln!(
        h,
        "<p class=\"summary\">Download for a node holding OLD: <b id=\"download\">{}</b> of NEW's {} — {} of {} layers. \
         Store paths: {} changed, {} added, {} removed, {} unchanged. Config: {} change(s).</p>",
        human_size(d.download_bytes),
        human_size(d.new_total_bytes),
        d.layers.added.len(),
        d.new.layer_count,
        d.paths.changed.len(),
        d.paths.added.len(),
        d.paths.removed.len(),
        d.paths.unchanged,
        d.config.len(),
    );
    bars(&mut h, d);
    layers_table(&mut h, d);
    paths_table(&mut h, d);
    config_table(&mut h, d);
    files_tables(&mut h, d);
    h.push_str("</body>\n</html>\n");
    h
}

fn tooltip(l: &LayerInfo, index: usize) -> String {
    let mut t = format!(
        "layer {} · {}\ngroup: {}\n{}",
        index + 1,
        human_size(l.size),
        l.group.as_deref().unwrap_or("-"),
        l.digest
    );
    const MAX: usize = 40;
    for p in l.paths.iter().take(MAX) {
        t.push('\n');
        t.push_str(&p.full());
    }
    if l.paths.len() > MAX {
        let _ = write!(t, "\n… and {} more", l.paths.len() - MAX);
    }
    if l.paths.is_empty() {
        t.push_str("\n(no store paths)");
    }
    t
}

fn bars(h: &mut String, d: &Diff) {
    let _ = writeln!(
        h,
        "<div class=\"legend\"><span class=\"sw shared\"></span>shared \
         <span class=\"sw changed\"></span>only in this image \
         <span class=\"sw regrouped\"></span>regrouped (same store paths, new grouping) \
         <span class=\"sw recompressed\"></span>recompressed (same files, other compression)</div>"
    );
    let scale = d.old.total_bytes.max(d.new.total_bytes).max(1) as f64;
    let _ = writeln!(h, "<div class=\"bars\" id=\"bars\">");
    for (name, ins, is_new) in [("OLD", &d.old_image, false), ("NEW", &d.new_image, true)] {
        let total: u64 = ins.layers.iter().map(|l| l.size).sum();
        let width = (total as f64 / scale * 100.0).clamp(0.5, 100.0);
        let _ = writeln!(
            h,
            "<div class=\"barrow\"><div class=\"barlabel\">{name}</div><div class=\"track\">\
             <div class=\"bar\" id=\"bar-{}\" style=\"width:{width:.3}%\">",
            name.to_lowercase()
        );
        push_layers(h, d, ins, is_new, total);
        let _ = writeln!(h, "</div></div><div class=\"bartotal\">{}</div></div>", human_size(ins.compressed_size));
    }
    let _ = writeln!(h, "</div>");
}

fn push_layers(h: &mut String, d: &Diff, ins: &Inspection, is_new: bool, total: u64) {
    for (i, l) in ins.layers.iter().enumerate() {
        let pct = if total == 0 { 0.0 } else { l.size as f64 / total as f64 * 100.0 };
        let _ = writeln!(
            h,
            "<div class=\"layer {}\" style=\"flex:0 0 {pct:.4}%\" title=\"{}\" data-digest=\"{}\">{}</div>",
            d.layer_status(is_new, &l.digest).class(),
            escape(&tooltip(l, i)),
            escape(l.digest.as_str()),
            escape(&l.label()),
        );
    }
}

/// Opens a table; `name` is its class (a page may have several tables of files).
fn table_start(h: &mut String, name: &str, headers: &[&str]) {
    let _ = write!(h, "<table class=\"{name}\"><thead><tr>");
    for c in headers {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr></thead><tbody>\n");
}

/// A row; cells are already HTML.
fn table_row(h: &mut String, cells: &[String]) {
    h.push_str("<tr>");
    for c in cells {
        h.push_str(c);
    }
    h.push_str("</tr>\n");
}

fn td(s: &str) -> String {
    format!("<td>{}</td>", escape(s))
}

fn mono(s: &str) -> String {
    format!("<td class=\"mono\">{}</td>", escape(s))
}

fn num(s: &str) -> String {
    format!("<td class=\"num\">{}</td>", escape(s))
}

fn lines(items: &[String]) -> String {
    let escaped: Vec<String> = items.iter().map(|s| escape(s)).collect();
    format!("<td class=\"mono\">{}</td>", escaped.join("<br>"))
}

fn layers_table(h: &mut String, d: &Diff) {
    let _ = writeln!(
        h,
        "<h2>Layers: {} shared, {} added, {} removed</h2>",
        d.layers.shared.len(),
        d.layers.added.len(),
        d.layers.removed.len()
    );
    table_start(h, "layers", &["", "status", "#", "digest", "size", "group", "store paths"]);
    for (status, l) in d.layer_rows() {
        let paths: Vec<String> = l.paths.iter().map(|p| p.full()).collect();
        table_row(
            h,
            &[
                format!("<td><span class=\"sw {}\"></span></td>", status.class()),
                td(status.label()),
                num(&(l.index + 1).to_string()),
                mono(short_digest(l.digest.as_str())),
                num(&human_size(l.size)),
                td(l.group.as_deref().unwrap_or("-")),
                if paths.is_empty() { "<td class=\"none\">none</td>".to_owned() } else { lines(&paths) },
            ],
        );
    }
    h.push_str("</tbody></table>\n");
}

fn paths_table(h: &mut String, d: &Diff) {
    let p = &d.paths;
    let _ = writeln!(
        h,
        "<h2>Store paths: {} changed, {} added, {} removed, {} unchanged</h2>",
        p.changed.len(),
        p.added.len(),
        p.removed.len(),
        p.unchanged
    );
    if p.changed.is_empty() && p.added.is_empty() && p.removed.is_empty() {
        h.push_str("<p class=\"none\">No store path changed.</p>\n");
        return;
    }
    table_start(h, "paths", &["name", "change", "old", "new"]);
    for c in &p.changed {
        table_row(h, &[td(&c.name), td(&c.describe()), mono(&c.old.full()), mono(&c.new.full())]);
    }
    for a in &p.added {
        table_row(h, &[td(a.name()), td("added"), td("-"), mono(&a.full())]);
    }
    for r in &p.removed {
        table_row(h, &[td(r.name()), td("removed"), mono(&r.full()), td("-")]);
    }
    h.push_str("</tbody></table>\n");
}

fn config_table(h: &mut String, d: &Diff) {
    let _ = writeln!(h, "<h2>Config: {} change(s)</h2>", d.config.len());
    if d.config.is_empty() {
        h.push_str("<p class=\"none\">No config change.</p>\n");
        return;
    }
    table_start(h, "config", &["field", "old", "new"]);
    for c in &d.config {
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".to_owned());
        table_row(h, &[td(&c.field), mono(&v(&c.old)), mono(&v(&c.new))]);
    }
    h.push_str("</tbody></table>\n");
}

fn files_tables(h: &mut String, d: &Diff) {
    if !d.paths.changed.iter().any(|c| c.files.is_some()) {
        return;
    }
    let _ = writeln!(h, "<h2>Files of changed store paths</h2>");
    for c in &d.paths.changed {
        let Some(f) = &c.files else { continue };
        let _ = writeln!(
            h,
            "<h3><code>{}</code> — {}: {} modified, {} added, {} removed</h3>",
            escape(c.new.name()),
            escape(&c.describe()),
            f.modified.len(),
            f.added.len(),
            f.removed.len()
        );
        if f.modified.is_empty() && f.added.is_empty() && f.removed.is_empty() {
            continue;
        }
        table_start(h, "files", &["change", "path", "type", "old size", "new size"]);
        let size = |s: Option<u64>| s.map_or_else(|| "-".to_owned(), human_size);
        let row = |h: &mut String, status: String, fc: &FileChange| {
            let path = if fc.path.is_empty() { ".".to_owned() } else { fc.path.clone() };
            table_row(h, &[td(&status), mono(&path), td(&fc.kind), num(&size(fc.old_size)), num(&size(fc.new_size))]);
        };
        for fc in &f.modified {
            row(h, format!("modified ({})", fc.what.as_deref().unwrap_or("?")), fc);
        }
        for fc in &f.added {
            row(h, "added".to_owned(), fc);
        }
        for fc in &f.removed {
            row(h, "removed".to_owned(), fc);
        }
        h.push_str("</tbody></table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
