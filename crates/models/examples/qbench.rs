//! scratch
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use fluent_ai_candle_models::quant::QLinear;
use std::sync::Arc;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let m: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(4);
    let fmt = match args.get(2).map(|s| s.as_str()).unwrap_or("q4_1") {
        "q5_0" => GgmlDType::Q5_0,
        "q8_0" => GgmlDType::Q8_0,
        "q4k" => GgmlDType::Q4K,
        "q6k" => GgmlDType::Q6K,
        _ => GgmlDType::Q4_1,
    };
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1536);
    let k = 576;
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let q = QLinear::from_qtensor(Arc::new(QTensor::quantize(&w, fmt).unwrap())).unwrap();
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let iters = (20000 * 1536 / n / m.max(1)).max(3);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(q.forward(&x).unwrap());
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    println!(
        "{fmt:?} n={n} m={m}: {:.1} us/call, {:.2} us/row",
        best * 1e6,
        best * 1e6 / m as f64
    );
}
