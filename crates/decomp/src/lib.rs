//! decomp
