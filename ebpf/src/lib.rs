//! Library target of the eBPF crate. It exists so the userspace crate can name
//! this package as a build-dependency (see daemon/build.rs); the programs live
//! in main.rs and are built for the BPF target by aya-build.
#![no_std]
