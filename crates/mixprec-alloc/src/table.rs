//! `Table`: a dense row-major `layers × options` matrix of `f64`, serialised as nested JSON
//! arrays (one array per layer).

use serde::{Deserialize, Serialize};

/// Dense `rows × cols` matrix of `f64` (rows = layers, columns = bit options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Vec<f64>>", into = "Vec<Vec<f64>>")]
pub struct Table {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Table {
    /// A `rows × cols` table filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: f64) -> Self {
        Self {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    /// Builds a table from row-major data; `None` when `data.len() != rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Option<Self> {
        (data.len() == rows * cols).then_some(Self { rows, cols, data })
    }

    /// Builds a table from one vector per row; `None` when rows differ in length.
    pub fn from_rows(rows: Vec<Vec<f64>>) -> Option<Self> {
        let cols = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != cols) {
            return None;
        }
        let n = rows.len();
        Some(Self {
            rows: n,
            cols,
            data: rows.into_iter().flatten().collect(),
        })
    }

    /// Number of rows (layers).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (options).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Entry at (`row`, `col`). Panics when out of range (callers validate shapes first).
    pub fn get(&self, row: usize, col: usize) -> f64 {
        self.data[row * self.cols + col]
    }

    /// Sets the entry at (`row`, `col`).
    pub fn set(&mut self, row: usize, col: usize, value: f64) {
        self.data[row * self.cols + col] = value;
    }

    /// One row as a slice.
    pub fn row(&self, row: usize) -> &[f64] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }

    /// All entries, row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// First non-finite entry as (row, col), if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        self.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i / self.cols.max(1), i % self.cols.max(1)))
    }
}

impl TryFrom<Vec<Vec<f64>>> for Table {
    type Error = String;
    fn try_from(rows: Vec<Vec<f64>>) -> Result<Self, Self::Error> {
        let cols = rows.first().map_or(0, Vec::len);
        if let Some(bad) = rows.iter().position(|r| r.len() != cols) {
            return Err(format!(
                "table row {bad} has {} entries but row 0 has {cols}",
                rows[bad].len()
            ));
        }
        Table::from_rows(rows).ok_or_else(|| "ragged table".to_string())
    }
}

impl From<Table> for Vec<Vec<f64>> {
    fn from(t: Table) -> Self {
        if t.cols == 0 {
            return vec![Vec::new(); t.rows];
        }
        t.data.chunks(t.cols).map(<[f64]>::to_vec).collect()
    }
}
