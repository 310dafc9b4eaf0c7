//! The exec plugin (in progress).
