//! Stage 7, sinks: where finished records and incidents go. Today: JSON lines on [`stdout`].
//!
//! - In: anything `Serialize` that is done: [`crate::death::record::ExitRecord`]s and
//!   [`crate::incident::Incident`]s.
//! - Out: bytes to the outside world.
//! - Must not know: how a record was made or how a recovery runs; a sink never changes what it
//!   is given and never blocks the stages before it for long.

pub(crate) mod stdout;
