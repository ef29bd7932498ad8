//! One module per subcommand, each with its own `Args`.

pub mod apply;
pub mod bench;
pub mod compare;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod list;
pub mod mixed;
pub mod profile;
pub mod quantize;
pub mod report;
pub mod run;
pub mod sensitivity;
pub mod train;

/// Human-readable large counts: 12.3M, 4.5k.
pub fn si(x: u64) -> String {
    let f = x as f64;
    if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e4 {
        format!("{:.1}k", f / 1e3)
    } else {
        x.to_string()
    }
}
