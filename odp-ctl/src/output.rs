//! How results and errors reach the user: tables for people, JSON for scripts, and one mapping
//! from failures to exit codes.

use comfy_table::{presets, ContentArrangement, Table};
use odp_core::ErrorKind;
use serde::Serialize;

pub struct Output {
    pub json: bool,
}

/// A failure the CLI itself detects (as opposed to one odp-core reports).
#[derive(Debug)]
pub struct DataMismatch(pub String);

impl std::fmt::Display for DataMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataMismatch {}

/// An error whose details are already part of the JSON document the command printed, so that
/// `--json` output stays one document; people still get the message on stderr.
#[derive(Debug)]
pub struct AlreadyReported(pub anyhow::Error);

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for AlreadyReported {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NoDevice => 3,
        ErrorKind::Unsupported => 4,
        ErrorKind::Permission => 5,
        ErrorKind::InvalidInput => 6,
        ErrorKind::Completion => 7,
        ErrorKind::Peer => 8,
        ErrorKind::System => 1,
    }
}

fn classify(err: &anyhow::Error) -> (Option<ErrorKind>, i32) {
    if let Some(AlreadyReported(inner)) = err.downcast_ref::<AlreadyReported>() {
        return classify(inner);
    }
    if let Some(child) = err.downcast_ref::<crate::cmd::launch::ChildFailed>() {
        return (None, child.code);
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<odp_core::Error>() {
            return (Some(e.kind()), exit_code(e.kind()));
        }
        if cause.downcast_ref::<DataMismatch>().is_some() {
            return (Some(ErrorKind::Completion), 7);
        }
        if let Some(e) = cause.downcast_ref::<odp_ebpf::Error>() {
            let kind = match e {
                odp_ebpf::Error::NotRoot => ErrorKind::Permission,
                odp_ebpf::Error::InvalidConfig(_) => ErrorKind::InvalidInput,
                odp_ebpf::Error::NothingAttached(_) => ErrorKind::Unsupported,
                odp_ebpf::Error::Load(_) | odp_ebpf::Error::Bpf { .. } => ErrorKind::System,
            };
            return (Some(kind), exit_code(kind));
        }
    }
    (None, 1)
}

impl Output {
    /// Prints a JSON document (pretty, one per command).
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// Reports an error and returns the exit code for it.
    pub fn error(&self, err: &anyhow::Error) -> i32 {
        let (kind, code) = classify(err);
        let errno = err
            .chain()
            .find_map(|c| c.downcast_ref::<odp_core::Error>())
            .and_then(odp_core::Error::errno)
            .or_else(|| {
                err.downcast_ref::<AlreadyReported>()
                    .and_then(|r| {
                        r.0.chain()
                            .find_map(|c| c.downcast_ref::<odp_core::Error>())
                    })
                    .and_then(odp_core::Error::errno)
            });
        // The child's failure was said on stderr when it was seen; the output stays the
        // command's own (one JSON document, or the trace's lines).
        let reported = err.downcast_ref::<AlreadyReported>().is_some()
            || err
                .downcast_ref::<crate::cmd::launch::ChildFailed>()
                .is_some();
        if reported
            && (self.json
                || err
                    .downcast_ref::<crate::cmd::launch::ChildFailed>()
                    .is_some())
        {
            return code;
        }
        if self.json {
            let doc = serde_json::json!({
                "error": {
                    "kind": kind,
                    "errno": errno,
                    "message": format!("{err:#}"),
                    "exit_code": code,
                }
            });
            println!("{doc:#}");
        } else {
            eprintln!("odp-ctl: error: {err:#}");
        }
        code
    }
}

/// A borderless table in the style of ibv_devices / rdma tool output.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

/// Key/value lines aligned on the key column.
pub fn pairs(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}
