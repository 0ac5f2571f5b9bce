//! Frame access: reading headers from an XDP frame or a TC skb.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};

/// The farthest into a frame a header is read (Ethernet, IPv6 with its
/// extension headers, L4, an ICMP error's quoted header).
pub(crate) const MAX_HEADER_OFFSET: usize = 1024;

/// A packet the programs can read: XDP reads the frame directly, TC through
/// `bpf_skb_load_bytes` (headers of an skb need not be linear).
pub(crate) trait Frame {
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()>;
    fn length(&self) -> u32;
    fn ifindex(&self) -> u32;
}

/// A `T` at `offset` of the packet between `start` and `end` (the context's
/// data pointers), when all of it lies there.
#[inline(always)]
pub(crate) fn read_direct<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    // Bounded for the verifier, which refuses packet pointer arithmetic with
    // an offset it cannot bound (one read back from a map, say).
    if offset > MAX_HEADER_OFFSET || start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bytes lie between data and data_end, checked just above.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

impl Frame for XdpContext {
    /// Straight from the packet when the bytes are in the first buffer, else
    /// through `bpf_xdp_load_bytes` (multi-buffer frames).
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        if let Some(value) = read_direct(self.data(), self.data_end(), offset) {
            return Ok(value);
        }
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                value.as_mut_ptr().cast(),
                core::mem::size_of::<T>() as u32,
            )
        };
        if rc != 0 {
            return Err(());
        }
        // SAFETY: the helper succeeded, so every byte was written.
        Ok(unsafe { value.assume_init() })
    }

    /// The program is loaded without XDP multi-buffer support (section
    /// `xdp`, not `xdp.frags`), so the kernel only hands it frames that sit
    /// in one buffer: its length is `data_end - data`, no helper call needed.
    #[inline(always)]
    fn length(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context points at the kernel's xdp_md for this program.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

impl Frame for TcContext {
    /// Straight from the packet when the bytes are in the linear part (the
    /// headers nearly always are), else through `bpf_skb_load_bytes`.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        if let Some(value) = read_direct(self.data(), self.data_end(), offset) {
            return Ok(value);
        }
        self.load::<T>(offset).map_err(|_| ())
    }

    #[inline(always)]
    fn length(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context points at the kernel's __sk_buff for this program.
        unsafe { (*(self.as_ptr() as *const __sk_buff)).ifindex }
    }
}
