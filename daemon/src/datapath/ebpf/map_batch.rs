//! Batched map writes (`BPF_MAP_UPDATE_BATCH`, Linux 5.6), which aya does
//! not offer: one system call for many elements.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::{maps::MapData, util::nr_cpus};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Sets elements `0..count` of the per-CPU array `map` to zero on every
/// CPU; `value_size` is the size of one CPU's value.
///
/// # Errors
///
/// When the kernel refuses the batch or writes only part of it.
pub fn zero_per_cpu(map: &MapData, count: u32, value_size: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let cpus = nr_cpus().map_err(|(_, error)| error)?;
    // Each CPU's value is padded to 8 bytes in the batch buffer.
    let stride = value_size.div_ceil(8) * 8 * usize::try_from(cpus.get())?;
    let keys: Vec<u32> = (0..count).collect();
    let values = vec![0u8; stride * count as usize];
    // union bpf_attr, `batch`: in_batch, out_batch, keys, values (u64 each),
    // count and map_fd (u32 each), elem_flags, flags.
    let mut attr = [0u64; 8];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd()).context("a BPF fd out of range")?;
    attr[4] = u64::from(count) | (u64::from(fd) << 32);
    let size = std::mem::size_of_val(&attr);
    // SAFETY: attr points at `keys` and `values`, which outlive the call and
    // hold `count` keys and `count` per-CPU values.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, attr.as_mut_ptr(), size) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_MAP_UPDATE_BATCH");
    }
    let written = attr[4] & u64::from(u32::MAX);
    anyhow::ensure!(
        written == u64::from(count),
        "BPF_MAP_UPDATE_BATCH wrote {written} of {count} elements"
    );
    Ok(())
}
