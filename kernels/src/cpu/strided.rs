//! Strided copies and broadcasting binary maps.
