//! Unit tests of the structured parser on real captured output (tests/fixtures/agents/).
use super::*;
