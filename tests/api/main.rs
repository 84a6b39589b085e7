//! Integration tests: the real server on a real socket, one test binary.

mod helpers;
