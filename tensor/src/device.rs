//! Where a tensor's storage lives.
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal (the `cuda` feature; asking for one where none exists is an error value).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Parses `cpu`, `cuda` (ordinal 0) and `cuda:N`.
impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        let s = s.trim();
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => {
                let ordinal = s
                    .strip_prefix("cuda:")
                    .ok_or_else(|| format!("unknown device '{s}' (expected cpu, cuda or cuda:N)"))?;
                ordinal
                    .parse::<usize>()
                    .map(Device::Cuda)
                    .map_err(|_| format!("invalid CUDA ordinal in '{s}' (expected cuda:N, N >= 0)"))
            }
        }
    }
}

/// Waits until every op queued on `device` has finished, so that a host clock read afterwards has seen
/// their work (a profiler brackets each timed op with two of these). CPU ops run synchronously: a no-op.
pub fn synchronize(device: Device) -> crate::Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => crate::cuda::cuda_synchronize(ordinal),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(crate::TensorError::UnsupportedDevice {
            op: "synchronize",
            device,
            reason: "this build has no CUDA backend (build with the `cuda` feature)".into(),
        }),
    }
}
