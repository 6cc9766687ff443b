//! Prints `docs/AUDIT.md`: parameters, FLOPs and saved activation bytes of every preset, each closed form
//! evaluated and compared with what the code gives (`cola::audit::document`).
//!
//!     cargo run --release --example audit_doc > docs/AUDIT.md
use std::process::ExitCode;

fn main() -> ExitCode {
    match cola::audit::document::render() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("audit_doc: {error}");
            ExitCode::FAILURE
        }
    }
}
