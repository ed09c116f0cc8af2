//! Plain-text tables and human-readable sizes for the human output of `inspect` and `diff`.

use std::io::{self, Write};

pub use crate::size::human as human_size;

/// `sha256:0123456789ab`: enough of a digest to tell layers apart in a table.
pub fn short_digest(d: &str) -> &str {
    &d[..d.len().min(19)]
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row and rows of cells, each column as wide as its widest cell. A cell may
/// hold several lines (`\n`); the row then spans as many lines.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|(h, _)| (*h).to_owned()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the table, each line indented by `indent` spaces, without trailing blanks.
    pub fn write<W: Write>(&self, w: &mut W, indent: usize) -> io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                let widest = cell.lines().map(|l| l.chars().count()).max().unwrap_or(0);
                widths[i] = widths[i].max(widest);
            }
        }
        let pad = " ".repeat(indent);
        let line = |w: &mut W, cells: &[&str]| -> io::Result<()> {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let fill = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                match self.aligns[i] {
                    Align::Left => {
                        out.push_str(cell);
                        out.push_str(&fill);
                    }
                    Align::Right => {
                        out.push_str(&fill);
                        out.push_str(cell);
                    }
                }
            }
            writeln!(w, "{pad}{}", out.trim_end())
        };
        let headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        line(w, &headers)?;
        for row in &self.rows {
            let split: Vec<Vec<&str>> = (0..n).map(|i| row.get(i).map_or(vec![""], |c| c.lines().collect())).collect();
            let height = split.iter().map(Vec::len).max().unwrap_or(1).max(1);
            for k in 0..height {
                let cells: Vec<&str> = split.iter().map(|c| c.get(k).copied().unwrap_or("")).collect();
                line(w, &cells)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn columns_align_and_multiline_cells_span_rows() {
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right), ("PATHS", Align::Left)]);
        t.row(vec!["a".into(), "1 B".into(), "x\ny".into()]);
        t.row(vec!["longer".into(), "10.0 KiB".into(), String::new()]);
        let mut out = Vec::new();
        t.write(&mut out, 2).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  NAME        SIZE  PATHS\n  a            1 B  x\n                    y\n  longer  10.0 KiB\n"
        );
    }
}
