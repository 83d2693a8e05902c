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
