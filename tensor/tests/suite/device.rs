//! Device names parse as the command line writes them (`cpu`, `cuda`, `cuda:N`) and anything else is an
//! error. Exact string parsing: no tolerance.
use cola_tensor::Device;

#[test]
fn parses_devices() {
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
    assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
    assert!("cuda:x".parse::<Device>().is_err());
    assert!("tpu".parse::<Device>().is_err());
}
