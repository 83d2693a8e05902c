//! Device selection: which device to run on (`--device auto|cpu|cuda[:N]|metal[:N]`), parsed
//! into a [`DeviceType`] and opened with typed errors.
//!
//! `auto` (the default) takes CUDA when this build has the `cuda` feature and a GPU answers,
//! then Metal likewise, else the CPU. An explicit GPU is never replaced by the CPU: a build
//! without its feature, or a machine without the device, is a [`DeviceError`] naming which.
//!
//! ```
//! use fluent_ai_candle_models::device::{DeviceError, DeviceType};
//! let cpu: DeviceType = "cpu".parse().unwrap();
//! assert_eq!(cpu.select().unwrap().location(), candle_core::DeviceLocation::Cpu);
//! assert_eq!("cuda:1".parse::<DeviceType>(), Ok(DeviceType::Cuda(1)));
//! assert!(matches!("tpu".parse::<DeviceType>(), Err(DeviceError::Parse(_))));
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, DeviceLocation};

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

/// Why a device could not be parsed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The text names no device.
    #[error("unknown device '{0}': expected auto, cpu, cuda, cuda:N, metal or metal:N")]
    Parse(String),
    /// The device's backend is not compiled into this build.
    #[error(
        "device {device} needs a build with the `{feature}` feature \
         (cargo build --release -p fluent-ai-candle-cli --features {feature}); \
         this binary was built without it"
    )]
    NotCompiled {
        /// The device asked for, e.g. `cuda:0`.
        device: String,
        /// The Cargo feature that compiles it in: `cuda` or `metal`.
        feature: &'static str,
    },
    /// The backend is compiled in but the device is not there (no GPU, no driver, a wrong
    /// ordinal).
    #[error("no {device} device on this machine: {reason}")]
    Unavailable {
        /// The device asked for, e.g. `cuda:1`.
        device: String,
        /// The backend's own error.
        reason: String,
    },
}

impl FromStr for DeviceType {
    type Err = DeviceError;

    /// `auto`, `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` (any case, surrounding blanks
    /// ignored); the ordinal defaults to 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceError::Parse(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((k, n)) => {
                let n = n.trim();
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (k.trim(), Some(n.parse::<usize>().map_err(|_| bad())?))
            }
            None => (lower.as_str(), None),
        };
        match (kind, ordinal) {
            ("auto", None) => Ok(DeviceType::Auto),
            ("cpu", None) => Ok(DeviceType::Cpu),
            ("cuda", n) => Ok(DeviceType::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(DeviceType::Metal(n.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DeviceType {
    /// The form [`FromStr`] reads: `auto`, `cpu`, `cuda:N`, `metal:N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceType::Auto => f.write_str("auto"),
            DeviceType::Cpu => f.write_str("cpu"),
            DeviceType::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceType::Metal(n) => write!(f, "metal:{n}"),
        }
    }
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

/// The name of an opened device, as `--device` takes it: `cpu`, `cuda:N` or `metal:N`.
///
/// ```
/// assert_eq!(fluent_ai_candle_models::device::device_name(&candle_core::Device::Cpu), "cpu");
/// ```
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl DeviceType {
    /// Opens the device. `Auto` always succeeds (the CPU at worst); an explicit GPU whose
    /// backend is not compiled in is [`DeviceError::NotCompiled`], one that is not there is
    /// [`DeviceError::Unavailable`].
    pub fn select(self) -> Result<Device, DeviceError> {
        let gpu = |feature: &'static str,
                   compiled: bool,
                   open: fn(usize) -> candle_core::Result<Device>,
                   n: usize| {
            let device = self.to_string();
            if !compiled {
                return Err(DeviceError::NotCompiled { device, feature });
            }
            open(n).map_err(|e| DeviceError::Unavailable {
                device,
                reason: e.to_string(),
            })
        };
        match self {
            DeviceType::Auto => Ok(auto_device()),
            DeviceType::Cpu => Ok(Device::Cpu),
            DeviceType::Cuda(n) => gpu("cuda", cfg!(feature = "cuda"), Device::new_cuda, n),
            DeviceType::Metal(n) => gpu("metal", cfg!(feature = "metal"), Device::new_metal, n),
        }
    }

    /// [`select`](Self::select) with the error as candle's (its message kept).
    pub fn open(self) -> candle_core::Result<Device> {
        self.select()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_form_parses() {
        let cases = [
            ("auto", DeviceType::Auto),
            ("cpu", DeviceType::Cpu),
            (" CPU ", DeviceType::Cpu),
            ("cuda", DeviceType::Cuda(0)),
            ("cuda:0", DeviceType::Cuda(0)),
            ("CUDA:3", DeviceType::Cuda(3)),
            ("metal", DeviceType::Metal(0)),
            ("metal:1", DeviceType::Metal(1)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<DeviceType>(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_device_names_are_parse_errors_naming_the_input() {
        for text in [
            "",
            "gpu",
            "tpu",
            "cuda:",
            "cuda:x",
            "cuda:-1",
            "cuda:1:2",
            "cpu:0",
            "auto:1",
            "cuda:99999999999999999999999",
            "metal: ",
        ] {
            match text.parse::<DeviceType>() {
                Err(DeviceError::Parse(input)) => assert_eq!(input, text),
                other => panic!("{text:?} parsed as {other:?}"),
            }
        }
        let msg = "gpu".parse::<DeviceType>().unwrap_err().to_string();
        assert!(msg.contains("'gpu'") && msg.contains("cuda:N"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for d in [
            DeviceType::Auto,
            DeviceType::Cpu,
            DeviceType::Cuda(2),
            DeviceType::Metal(0),
        ] {
            assert_eq!(d.to_string().parse::<DeviceType>(), Ok(d));
        }
    }

    #[test]
    fn cpu_and_auto_open_here() {
        assert_eq!(
            DeviceType::Cpu.select().map(|d| device_name(&d)),
            Ok("cpu".into())
        );
        let auto = DeviceType::Auto
            .select()
            .expect("auto always opens a device");
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert_eq!(device_name(&auto), "cpu");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_feature() {
        let err = DeviceType::Cuda(0).select().unwrap_err();
        assert_eq!(
            err,
            DeviceError::NotCompiled {
                device: "cuda:0".into(),
                feature: "cuda",
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("`cuda` feature") && msg.contains("--features cuda"),
            "{msg}"
        );
        // The candle-typed wrapper keeps the message.
        let candle = DeviceType::Cuda(0).open().unwrap_err().to_string();
        assert!(candle.contains("`cuda` feature"), "{candle}");
    }

    #[cfg(not(feature = "metal"))]
    #[test]
    fn metal_without_the_feature_names_the_feature() {
        let err = DeviceType::Metal(1).select().unwrap_err();
        assert_eq!(
            err,
            DeviceError::NotCompiled {
                device: "metal:1".into(),
                feature: "metal",
            }
        );
    }

    /// With the backend compiled in, a device ordinal no machine has is `Unavailable`.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_cuda_device_is_unavailable() {
        match DeviceType::Cuda(4096).select() {
            Err(DeviceError::Unavailable { device, .. }) => assert_eq!(device, "cuda:4096"),
            other => panic!(
                "expected Unavailable, got {:?}",
                other.map(|d| device_name(&d))
            ),
        }
    }
}
