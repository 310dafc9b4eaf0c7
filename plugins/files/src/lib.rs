//! The files plugin (in progress).
