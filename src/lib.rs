//! rgrid
