//! What the fuzz targets share.

/// Lets panics raised inside the Arrow crates unwind quietly, for targets that decode Arrow IPC.
///
/// `weir_runtime::buffer::decode_batch` catches arrow-ipc's panics on malformed buffers and
/// returns them as errors, but libfuzzer-sys's panic hook aborts on every panic, caught or not.
/// Any other panic still prints and aborts at once; an Arrow panic that escapes Weir's code
/// still aborts too, when it reaches the fuzz target's boundary.
pub fn let_arrow_panics_unwind() {
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_arrow = info.location().is_some_and(|l| l.file().contains("/arrow-"));
        if !in_arrow {
            abort_hook(info);
        }
    }));
}
