pub mod caps;
pub mod devices;
pub mod mr;
pub mod prefetch;
pub mod probes;
pub mod register;
pub mod trace;
