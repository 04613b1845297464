//! Perfetto timelines of ODP activity.

/// Perfetto's trace types, generated from proto/perfetto_trace.proto.
#[allow(clippy::all, clippy::pedantic, dead_code)]
pub mod protos {
    include!(concat!(env!("OUT_DIR"), "/perfetto.protos.rs"));
}
pub mod timeline;
