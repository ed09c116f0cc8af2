//! The human report of a diff: sections of tables.

use std::io::{self, Write};

use super::{Diff, FileChange, LayerRef};
use crate::inspect::write_kv;
use crate::table::{Align, Table, human_size, short_digest};

/// Writes the human report.
pub fn write_text<W: Write>(d: &Diff, w: &mut W) -> io::Result<()> {
    let mut head =
        Table::new(&[("", Align::Left), ("", Align::Left), ("", Align::Left), ("", Align::Right), ("", Align::Right)]);
    for (k, s) in [("OLD", &d.old), ("NEW", &d.new)] {
        head.row(vec![
            k.to_owned(),
            s.reference.clone(),
            short_digest(s.manifest_digest.as_str()).to_owned(),
            format!("{} layers", s.layer_count),
            human_size(s.total_bytes),
        ]);
    }
    write_kv(&head, w)?;
    writeln!(w)?;
    if d.identical {
        writeln!(w, "The images are identical: same config, same layers. Nothing to download.")?;
        return Ok(());
    }
    let added = d.layers.added.len();
    writeln!(
        w,
        "DOWNLOAD  {} of NEW's {} ({} of {} layers are new to a node holding OLD)",
        human_size(d.download_bytes),
        human_size(d.new_total_bytes),
        added,
        d.new.layer_count
    )?;
    if let Some(p) = &d.partial_pull {
        writeln!(
            w,
            "PARTIAL   about {} with partial pulls of its {} zstd:chunked layer(s): the chunks OLD lacks \
             ({} fetching whole changed files)",
            human_size(p.by_chunks_bytes),
            p.chunked_layers,
            human_size(p.by_files_bytes)
        )?;
    }
    writeln!(w)?;
    write_layers(d, w)?;
    write_paths(d, w)?;
    write_config(d, w)?;
    write_files(d, w)
}

/// The LAYERS section: each layer's status, then the regrouped ones explained.
fn write_layers<W: Write>(d: &Diff, w: &mut W) -> io::Result<()> {
    let added = d.layers.added.len();
    writeln!(w, "LAYERS  {} shared, {} added, {} removed", d.layers.shared.len(), added, d.layers.removed.len())?;
    let mut t = Table::new(&[
        ("STATUS", Align::Left),
        ("#", Align::Right),
        ("DIGEST", Align::Left),
        ("SIZE", Align::Right),
        ("GROUP", Align::Left),
        ("STORE PATHS", Align::Left),
    ]);
    for (status, l) in d.layer_rows() {
        t.row(vec![
            status.label().to_owned(),
            (l.index + 1).to_string(),
            short_digest(l.digest.as_str()).to_owned(),
            human_size(l.size),
            l.group.clone().unwrap_or_else(|| "-".to_owned()),
            path_names(l),
        ]);
    }
    t.write(w, 2)?;
    if !d.layers.regrouped.is_empty() {
        writeln!(w, "  {} layer(s) changed only because the grouping moved store paths:", d.layers.regrouped.len())?;
        for r in &d.layers.regrouped {
            let names: Vec<&str> = r.paths.iter().map(|p| p.name()).collect();
            let from: Vec<&str> = r.moved_from.iter().map(|x| short_digest(x.as_str())).collect();
            writeln!(
                w,
                "    {} ({}): {} (from {})",
                short_digest(r.digest.as_str()),
                r.group.as_deref().unwrap_or("-"),
                names.join(", "),
                from.join(", ")
            )?;
        }
    }
    writeln!(w)
}

/// The STORE PATHS section: changed (with why), added, removed.
fn write_paths<W: Write>(d: &Diff, w: &mut W) -> io::Result<()> {
    let p = &d.paths;
    writeln!(
        w,
        "STORE PATHS  {} changed, {} added, {} removed, {} unchanged",
        p.changed.len(),
        p.added.len(),
        p.removed.len(),
        p.unchanged
    )?;
    if p.changed.is_empty() && p.added.is_empty() && p.removed.is_empty() {
        writeln!(w, "  (none changed)")?;
    } else {
        let mut t =
            Table::new(&[("NAME", Align::Left), ("CHANGE", Align::Left), ("OLD", Align::Left), ("NEW", Align::Left)]);
        for c in &p.changed {
            t.row(vec![
                c.name.clone(),
                c.describe(),
                c.old.hash_part()[..8].to_owned(),
                c.new.hash_part()[..8].to_owned(),
            ]);
        }
        for a in &p.added {
            t.row(vec![a.name().to_owned(), "added".to_owned(), "-".to_owned(), a.hash_part()[..8].to_owned()]);
        }
        for r in &p.removed {
            t.row(vec![r.name().to_owned(), "removed".to_owned(), r.hash_part()[..8].to_owned(), "-".to_owned()]);
        }
        t.write(w, 2)?;
    }
    writeln!(w)
}

/// The CONFIG section: one row per changed field.
fn write_config<W: Write>(d: &Diff, w: &mut W) -> io::Result<()> {
    writeln!(w, "CONFIG  {} change(s)", d.config.len())?;
    if !d.config.is_empty() {
        let mut t = Table::new(&[("FIELD", Align::Left), ("OLD", Align::Left), ("NEW", Align::Left)]);
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".to_owned());
        for c in &d.config {
            t.row(vec![c.field.clone(), v(&c.old), v(&c.new)]);
        }
        t.write(w, 2)?;
    }
    Ok(())
}

/// The FILES section (`--files`): per changed path, its modified, added and removed files.
fn write_files<W: Write>(d: &Diff, w: &mut W) -> io::Result<()> {
    let p = &d.paths;
    if p.changed.iter().any(|c| c.files.is_some()) {
        writeln!(w)?;
        writeln!(w, "FILES")?;
        for c in &p.changed {
            let Some(f) = &c.files else { continue };
            writeln!(
                w,
                "  {} — {}: {} modified, {} added, {} removed",
                c.new.name(),
                c.describe(),
                f.modified.len(),
                f.added.len(),
                f.removed.len()
            )?;
            if f.modified.is_empty() && f.added.is_empty() && f.removed.is_empty() {
                continue;
            }
            let mut t = Table::new(&[
                ("CHANGE", Align::Left),
                ("PATH", Align::Left),
                ("TYPE", Align::Left),
                ("OLD SIZE", Align::Right),
                ("NEW SIZE", Align::Right),
            ]);
            let size = |s: Option<u64>| s.map_or_else(|| "-".to_owned(), human_size);
            let mut add = |status: String, fc: &FileChange| {
                let path = if fc.path.is_empty() { ".".to_owned() } else { fc.path.clone() };
                t.row(vec![status, path, fc.kind.clone(), size(fc.old_size), size(fc.new_size)]);
            };
            for fc in &f.modified {
                add(format!("modified ({})", fc.what.as_deref().unwrap_or("?")), fc);
            }
            for fc in &f.added {
                add("added".to_owned(), fc);
            }
            for fc in &f.removed {
                add("removed".to_owned(), fc);
            }
            t.write(w, 4)?;
        }
    }
    Ok(())
}

/// Every store path name of a layer, one a line; `-` when it holds none.
fn path_names(l: &LayerRef) -> String {
    if l.paths.is_empty() {
        return "-".to_owned();
    }
    l.paths.iter().map(|p| p.name()).collect::<Vec<_>>().join("\n")
}
