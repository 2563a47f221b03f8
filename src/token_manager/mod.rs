//! Refresh times, retry delays and error classification: pure code, no I/O.
