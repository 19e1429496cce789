//! What the Rust loaders share: the command line, the packets on stdin and the
//! JSON lines on stdout (tests/loaders/README.md).  The loaders themselves only
//! load, run and read, each through its own library.

use std::fmt::Display;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::exit;

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

pub struct Options {
    pub object: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub runs: Vec<String>,
    pub dumps: Vec<String>,
    pub ring: Option<String>,
}

pub fn usage(tool: &str) -> String {
    format!("usage: {tool} OBJECT [--pin-dir DIR] [--run PROG]... [--dump MAP]... [--ring MAP] < packets")
}

/// The command line, or exit 2 with one line on stderr.
pub fn parse_args(tool: &str) -> Options {
    match try_parse(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{tool}: {e}; {}", usage(tool));
            exit(EXIT_USAGE)
        }
    }
}

fn try_parse(args: Vec<String>) -> Result<Options, String> {
    let mut it = args.into_iter();
    let object = match it.next() {
        Some(a) if !a.starts_with('-') => PathBuf::from(a),
        _ => return Err("no OBJECT".into()),
    };
    let mut o = Options {
        object,
        pin_dir: None,
        runs: vec![],
        dumps: vec![],
        ring: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pin-dir" => o.pin_dir = Some(PathBuf::from(value)),
            "--run" => o.runs.push(value),
            "--dump" => o.dumps.push(value),
            "--ring" => o.ring = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// Hex packets, one a line, from stdin.
pub fn read_packets() -> Result<Vec<Vec<u8>>, String> {
    let mut out = vec![];
    for (i, line) in io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let line = line.trim();
        if !line.is_empty() {
            out.push(decode_hex(line).ok_or_else(|| format!("packet {i}: not hex"))?);
        }
    }
    Ok(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One JSON line on stdout.
pub fn emit(record: serde_json::Value) {
    let mut out = io::stdout().lock();
    // A closed stdout ends the run quietly: the reader has what it wanted.
    if writeln!(out, "{record}").is_err() {
        exit(0)
    }
}

/// Exit 1 with the error as one line on stderr.
pub fn fail(tool: &str, what: impl Display) -> ! {
    let text = what.to_string();
    eprintln!(
        "{tool}: {}",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    exit(EXIT_FAILURE)
}

/// The section a function symbol is in (aya needs a tp_btf program's
/// tracepoint name, which its section names: "tp_btf/<name>").
pub fn section_of(object: &[u8], function: &str) -> Option<String> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let file = object::File::parse(object).ok()?;
    let sym = file.symbols().find(|s| s.name().ok() == Some(function))?;
    let sec = file.section_by_index(sym.section_index()?).ok()?;
    sec.name().ok().map(str::to_owned)
}
