//! The chat plugin (in progress).
