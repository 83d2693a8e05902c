//! Device selection.

use candle_core::Device;

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceType {
    /// CUDA if compiled in and present, then Metal, then the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// The Metal device with this ordinal (needs the `metal` feature).
    Metal(usize),
}

/// Picks CUDA, then Metal, then the CPU, whichever is compiled in and present.
pub fn auto_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

impl DeviceType {
    /// Opens the device; an explicit GPU that is not compiled in or absent is an error.
    pub fn open(self) -> candle_core::Result<Device> {
        match self {
            DeviceType::Auto => Ok(auto_device()),
            DeviceType::Cpu => Ok(Device::Cpu),
            DeviceType::Cuda(i) => Device::new_cuda(i),
            DeviceType::Metal(i) => Device::new_metal(i),
        }
    }
}

/// Pins the number of CPU threads candle uses, and returns it. Call it first thing in `main`,
/// before any other thread starts.
///
/// Unless `RAYON_NUM_THREADS` is set, candle 0.11 recomputes the thread count of its f32 matrix
/// products on every product by parsing `/proc/cpuinfo` (`num_cpus::get_physical`), and
/// decoding runs two such products per layer per step (attention): on a 2-core machine that
/// costs ~15% of SmolLM2's decode time (88 → 103 tok/s measured with the variable set). When it
/// is not set, this sets `RAYON_NUM_THREADS` to the count candle would have chosen,
/// so nothing but the cost changes. Changing the environment while another thread reads it is
/// a data race in C libraries, hence "before any other thread starts".
///
/// ```
/// let threads = fluent_ai_candle_models::device::init_cpu_threads();
/// assert!(threads >= 1);
/// assert_eq!(threads, candle_core::utils::get_num_threads());
/// ```
pub fn init_cpu_threads() -> usize {
    let threads = candle_core::utils::get_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    threads
}
