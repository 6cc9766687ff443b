//! cola facade
