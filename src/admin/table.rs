//! Human output of the admin CLI: columns padded to their widest cell, then free notes.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new(), notes: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A line printed after the rows (a topic's settings, say).
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> =
                cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out += &line(row);
        }
        if !self.notes.is_empty() {
            out += "\n";
            for note in &self.notes {
                out += note;
                out += "\n";
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["TOPIC", "PARTITIONS"]);
        table.row(vec!["orders-long-name".into(), "3".into()]);
        table.row(vec!["a".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "TOPIC             PARTITIONS\norders-long-name  3\na                 12\n"
        );
    }
}
