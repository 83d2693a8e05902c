//! Devices: [`DeviceType`] (`auto|cpu|cuda[:N]|metal[:N]`) and the seed's [`auto_device`].

pub use fluent_ai_candle_models::device::*;

use fluent_ai_candle_engine::Device;

/// The best device this build and machine have: CUDA, then Metal, then the CPU (the seed's
/// `auto_device()?`). It never fails today (the CPU is always there); the `Result` is the
/// seed's signature, so a later device check can report a typed [`DeviceError`].
///
/// ```
/// let device = fluent_ai_candle::device::auto_device()?;
/// # let _ = device;
/// # Ok::<(), fluent_ai_candle::device::DeviceError>(())
/// ```
pub fn auto_device() -> Result<Device, DeviceError> {
    Ok(fluent_ai_candle_models::auto_device())
}
